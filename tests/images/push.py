#!/usr/bin/env python3
"""Pushes an OCI layout to a registry with raw Distribution API calls,
checking nothing, so hostile images (bad diff_ids, unknown media types,
foreign platforms) reach the registry as they are; skopeo would refuse
some of them.

    push.py LAYOUT_DIR TAG http[s]://HOST:PORT REPO[:TAG] [--creds U:P] [--ca FILE]

The layout's manifest tagged TAG (following an index) is pushed as
REPO:TAG (REPO's tag defaults to TAG). Only for registries on loopback.
"""

import base64
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request


def main():
    args = sys.argv[1:]
    creds = ca = None
    if "--creds" in args:
        i = args.index("--creds")
        creds = args[i + 1]
        del args[i:i + 2]
    if "--ca" in args:
        i = args.index("--ca")
        ca = args[i + 1]
        del args[i:i + 2]
    layout, tag, base, dest = args
    host = urllib.parse.urlparse(base).hostname
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        raise SystemExit("push.py pushes to loopback registries only")
    repo, _, dtag = dest.partition(":")
    dtag = dtag or tag
    ctx = ssl.create_default_context(cafile=ca) if ca else None
    headers = {}
    if creds:
        headers["Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()

    def req(method, url, data=None, ctype=None):
        if not url.startswith("http"):
            url = base + url
        h = dict(headers)
        if ctype:
            h["Content-Type"] = ctype
        r = urllib.request.Request(url, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(r, context=ctx) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            if method == "HEAD" and e.code == 404:
                return 404, e.headers, b""
            raise SystemExit("%s %s: %s %s" % (method, url, e.code, e.read()[:300]))

    def blob_path(digest):
        return os.path.join(layout, "blobs", *digest.split(":", 1))

    def push_blob(digest):
        st, _, _ = req("HEAD", "/v2/%s/blobs/%s" % (repo, digest))
        if st == 200:
            return
        _, h, _ = req("POST", "/v2/%s/blobs/uploads/" % repo, data=b"")
        loc = h["Location"]
        if not loc.startswith("http"):
            loc = base + loc
        sep = "&" if "?" in loc else "?"
        with open(blob_path(digest), "rb") as f:
            data = f.read()
        req("PUT", loc + sep + "digest=" + digest, data=data,
            ctype="application/octet-stream")

    def push_manifest(desc, ref):
        with open(blob_path(desc["digest"]), "rb") as f:
            raw = f.read()
        m = json.loads(raw)
        mt = m.get("mediaType") or desc["mediaType"]
        if "manifests" in m:
            for child in m["manifests"]:
                push_manifest(child, child["digest"])
        else:
            push_blob(m["config"]["digest"])
            for layer in m["layers"]:
                push_blob(layer["digest"])
        req("PUT", "/v2/%s/manifests/%s" % (repo, ref), data=raw, ctype=mt)

    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            push_manifest(desc, dtag)
            return
    raise SystemExit("%s has no manifest tagged %s" % (layout, tag))


if __name__ == "__main__":
    main()
