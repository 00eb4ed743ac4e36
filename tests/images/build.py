#!/usr/bin/env python3
"""Writes the test images as OCI image layouts, byte for byte, so every
whiteout, opaque marker, owner, mode and xattr is exactly what the tests
expect. Called by build.sh (which caches and locks); see there.

    build.py busybox OUT          busybox, busybox-zstd, busybox-plain
    build.py wheel OUT            wheels/stockade_hello-1.0-py3-none-any.whl
    build.py hostile OUT          hostile/NAME for every hostile case
    build.py debian-python OUT ROOTFS.tar
"""

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_GZIP = MT_TAR + "+gzip"
MT_ZSTD = MT_TAR + "+zstd"
CREATED = "2024-01-02T03:04:05Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Layout:
    """An OCI image layout being written into DIR.tmp, renamed to DIR by
    finish()."""

    def __init__(self, path):
        self.final = path
        self.path = path + ".tmp"
        shutil.rmtree(self.path, ignore_errors=True)
        os.makedirs(os.path.join(self.path, "blobs", "sha256"))
        with open(os.path.join(self.path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        self.manifests = []

    def blob(self, data):
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.path, "blobs", "sha256", d), "wb") as f:
            f.write(data)
        return "sha256:" + d, len(data)

    def blob_file(self, src):
        """Moves file SRC in as a blob; returns (digest, size)."""
        h = hashlib.sha256()
        with open(src, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        size = os.path.getsize(src)
        os.replace(src, os.path.join(self.path, "blobs", "sha256", h.hexdigest()))
        return "sha256:" + h.hexdigest(), size

    def json_blob(self, obj):
        return self.blob(json.dumps(obj, sort_keys=True).encode())

    def image(self, layers, config, tag=None, layer_media=None, platform=None):
        """layers: [(media_type, digest, size)]; config: the image config
        object. Adds a manifest (tagged when tag is given) and returns its
        descriptor."""
        cdig, csize = self.json_blob(config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": cdig, "size": csize},
            "layers": [
                {"mediaType": layer_media or mt, "digest": d, "size": s}
                for (mt, d, s) in layers
            ],
        }
        mdig, msize = self.json_blob(manifest)
        desc = {"mediaType": MT_MANIFEST, "digest": mdig, "size": msize}
        if platform:
            desc["platform"] = platform
        if tag is not None:
            self.tag(desc, tag)
        return desc

    def tag(self, desc, tag):
        desc = dict(desc)
        desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.manifests.append(desc)

    def finish(self):
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump(
                {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": self.manifests},
                f,
            )
        shutil.rmtree(self.final, ignore_errors=True)
        os.rename(self.path, self.final)


def config(diff_ids, **cfg):
    return {
        "created": CREATED,
        "architecture": "amd64",
        "os": "linux",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": "tests/images/build.py"}
                    for _ in diff_ids],
    }


# ---- tar building ----------------------------------------------------------

class Tar:
    """An uncompressed layer tar built in memory (PAX format: xattrs go in
    SCHILY.xattr records)."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name, type_, mode, uid, gid):
        ti = tarfile.TarInfo(name)
        ti.type = type_
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.uname = ti.gname = ""
        ti.mtime = 1704164645
        return ti

    def dir(self, name, mode=0o755, uid=0, gid=0):
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, uid, gid))

    def file(self, name, data=b"", mode=0o644, uid=0, gid=0, xattrs=None):
        if isinstance(data, str):
            data = data.encode()
        ti = self._info(name, tarfile.REGTYPE, mode, uid, gid)
        ti.size = len(data)
        if xattrs:
            ti.pax_headers = {"SCHILY.xattr." + k: v for k, v in xattrs.items()}
        self.tar.addfile(ti, io.BytesIO(data))

    def symlink(self, name, target, uid=0, gid=0):
        ti = self._info(name, tarfile.SYMTYPE, 0o777, uid, gid)
        ti.linkname = target
        self.tar.addfile(ti)

    def hardlink(self, name, target):
        ti = self._info(name, tarfile.LNKTYPE, 0o644, 0, 0)
        ti.linkname = target
        self.tar.addfile(ti)

    def device(self, name, major, minor, char=True):
        ti = self._info(name, tarfile.CHRTYPE if char else tarfile.BLKTYPE, 0o666, 0, 0)
        ti.devmajor, ti.devminor = major, minor
        self.tar.addfile(ti)

    def bytes(self):
        self.tar.close()
        return self.buf.getvalue()


def compress(raw, kind):
    if kind == "gzip":
        out = io.BytesIO()
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as g:
            g.write(raw)
        return MT_GZIP, out.getvalue()
    if kind == "zstd":
        z = subprocess.run(["zstd", "-q", "-c", "-3"], input=raw, stdout=subprocess.PIPE, check=True)
        return MT_ZSTD, z.stdout
    return MT_TAR, raw


def add_layer(layout, raw, kind="gzip"):
    """Returns ((media, digest, size), diff_id)."""
    mt, data = compress(raw, kind)
    d, s = layout.blob(data)
    return (mt, d, s), "sha256:" + hashlib.sha256(raw).hexdigest()


# ---- busybox ---------------------------------------------------------------

def busybox_layers():
    """The five uncompressed layers of the busybox image."""
    bb = "/bin/busybox"
    with open(bb, "rb") as f:
        busybox = f.read()
    applets = subprocess.run([bb, "--list"], stdout=subprocess.PIPE, check=True, text=True)
    l1 = Tar()
    for d in ["bin", "etc", "usr", "usr/bin", "home", "data", "opq", "srv", "var"]:
        l1.dir(d)
    l1.dir("tmp", mode=0o1777)
    l1.dir("home/app", mode=0o755, uid=1234, gid=1234)
    l1.file("bin/busybox", busybox, mode=0o755)
    for a in sorted(set(applets.stdout.split())):
        if a != "busybox":
            l1.symlink("bin/" + a, "busybox")
    l1.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234:app:/home/app:/bin/sh\n")
    l1.file("etc/group", "root:x:0:\napp:x:1234:\n")
    l1.file("opq/a", "a\n")
    l1.file("opq/b", "b\n")
    l1.file("gone", "to be whited out\n")
    l1.file("usr/bin/suidfile", "#!/bin/sh\nid -u\n", mode=0o4755)
    l1.file("data/hl1", "hard-linked\n")
    l1.hardlink("data/hl2", "data/hl1")
    l1.symlink("data/link", "hl1")
    l1.file("data/owned", "owned by app\n", uid=1234, gid=1234)
    l1.file("data/xattr", "has an xattr\n", xattrs={"user.test": "hello"})
    l1.file("data/modified", "layer1\n")

    l2 = Tar()
    l2.file(".wh.gone")
    l2.dir("opq")
    l2.file("opq/.wh..wh..opq")
    l2.file("opq/c", "c\n")
    l2.file("l2file", "from layer 2\n")
    l2.dir("data")
    l2.file("data/modified", "layer2\n")

    rest = []
    for n in (3, 4, 5):
        t = Tar()
        t.file("l%dfile" % n, "from layer %d\n" % n)
        rest.append(t.bytes())
    return [l1.bytes(), l2.bytes()] + rest


def busybox_config(diff_ids, **over):
    cfg = dict(
        Env=[PATH_ENV, "FOO=bar"],
        WorkingDir="/srv",
        User="app",
        Cmd=["sh", "-c", "echo from-cmd"],
    )
    cfg.update(over)
    return config(diff_ids, **cfg)


def build_busybox(out):
    raws = busybox_layers()
    for name, kind in (("busybox", "gzip"), ("busybox-zstd", "zstd"), ("busybox-plain", "none")):
        lay = Layout(os.path.join(out, name))
        layers, diff_ids = zip(*[add_layer(lay, r, kind) for r in raws])
        lay.image(list(layers), busybox_config(list(diff_ids)), tag="latest")
        if name == "busybox":
            lay.image(
                list(layers),
                busybox_config(list(diff_ids), Entrypoint=["echo", "ep:"], Cmd=["default-arg"]),
                tag="entrypoint",
            )
        lay.finish()


# ---- wheel -----------------------------------------------------------------

def build_wheel(out):
    name, version = "stockade_hello", "1.0"
    dist = "%s-%s.dist-info" % (name, version)
    files = {
        name + "/__init__.py": 'def hello():\n    return "hello from the wheel"\n',
        dist + "/METADATA": "Metadata-Version: 2.1\nName: stockade-hello\nVersion: %s\n"
                            "Summary: test wheel for stockade's image tests\n" % version,
        dist + "/WHEEL": "Wheel-Version: 1.0\nGenerator: stockade-tests\n"
                         "Root-Is-Purelib: true\nTag: py3-none-any\n",
        dist + "/top_level.txt": name + "\n",
    }
    record = []
    for path, text in files.items():
        data = text.encode()
        h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (path, h, len(data)))
    record.append(dist + "/RECORD,,")
    files[dist + "/RECORD"] = "\n".join(record) + "\n"
    wd = os.path.join(out, "wheels")
    os.makedirs(wd, exist_ok=True)
    target = os.path.join(wd, "%s-%s-py3-none-any.whl" % (name, version))
    with zipfile.ZipFile(target + ".tmp", "w", zipfile.ZIP_DEFLATED) as z:
        for path, text in files.items():
            z.writestr(path, text)
    os.replace(target + ".tmp", target)


# ---- hostile ---------------------------------------------------------------

def one_layer(out, name, raw, kind="gzip", diff_id=None, layer_media=None):
    lay = Layout(os.path.join(out, "hostile", name))
    desc, real = add_layer(lay, raw, kind)
    lay.image([desc], config([diff_id or real], Env=[PATH_ENV], Cmd=["sh"]),
              tag="latest", layer_media=layer_media)
    lay.finish()


def build_bomb(out):
    """A gzip layer holding one 2 GiB file of zeros (~2 MB compressed),
    written streaming."""
    lay = Layout(os.path.join(out, "hostile", "bomb"))
    size = 2 << 30
    tmp = os.path.join(lay.path, "layer.tmp")
    raw_hash = hashlib.sha256()
    with open(tmp, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, compresslevel=9) as g:
        def put(b):
            raw_hash.update(b)
            g.write(b)
        ti = tarfile.TarInfo("zeros")
        ti.size = size
        ti.mode = 0o644
        ti.mtime = 1704164645
        put(ti.tobuf(format=tarfile.GNU_FORMAT))
        chunk = bytes(1 << 20)
        for _ in range(size >> 20):
            put(chunk)
        put(bytes(1024))  # end of archive
    d, s = lay.blob_file(tmp)
    lay.image([(MT_GZIP, d, s)],
              config(["sha256:" + raw_hash.hexdigest()], Env=[PATH_ENV]), tag="latest")
    lay.finish()


def build_hostile(out):
    os.makedirs(os.path.join(out, "hostile"), exist_ok=True)
    # The canary names are what the tests look for outside the store.
    t = Tar()
    t.file("ok", "ok\n")
    t.file("../stockade-hostile-dotdot", "escaped\n")
    t.file("sub/../../../../../../../../tmp/stockade-hostile-dotdot2", "escaped\n")
    one_layer(out, "dotdot", t.bytes())

    t = Tar()  # allowed: the leading / is stripped (as tar and Docker do)
    t.file("/etc/stockade-hostile-abs", "inside the image\n")
    one_layer(out, "abspath", t.bytes())

    t = Tar()
    t.symlink("a", "/etc")
    t.file("a/stockade-hostile-symlink", "escaped\n")
    t.symlink("r", "../../../../../../../../../tmp")
    t.file("r/stockade-hostile-symlink-rel", "escaped\n")
    one_layer(out, "symlink-escape", t.bytes())

    t = Tar()  # the test creates the target first and checks it is untouched
    t.hardlink("h", "/tmp/stockade-hostile-hardlink-target")
    t.file("h", "written through the hard link\n")
    t.hardlink("p", "/etc/passwd")
    t.hardlink("q", "../../../../../../../../etc/passwd")
    one_layer(out, "hardlink-escape", t.bytes())

    t = Tar()
    t.dir("dev")
    t.device("dev/mem", 1, 1)
    one_layer(out, "device", t.bytes())

    t = Tar()
    for i in range(300):
        d = "d%03d" % i
        t.dir(d)
        for j in range(1000):
            t.file("%s/%d" % (d, j))
    one_layer(out, "many-files", t.bytes())

    t = Tar()
    t.file("ok", "ok\n")
    one_layer(out, "bad-diffid", t.bytes(), diff_id="sha256:" + "0" * 64)

    t = Tar()
    t.file("ok", "ok\n")
    one_layer(out, "unknown-mediatype", t.bytes(),
              layer_media="application/vnd.example.unknown.layer.v1+weird")

    # An index whose only manifest is for linux/arm64.
    lay = Layout(os.path.join(out, "hostile", "arm64-only"))
    t = Tar()
    t.file("ok", "ok\n")
    desc, diff = add_layer(lay, t.bytes())
    cfg = config([diff], Env=[PATH_ENV])
    cfg["architecture"] = "arm64"
    m = lay.image([desc], cfg, platform={"os": "linux", "architecture": "arm64"})
    idx = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [m]}
    d, s = lay.json_blob(idx)
    lay.tag({"mediaType": MT_INDEX, "digest": d, "size": s}, "latest")
    lay.finish()

    build_bomb(out)


# ---- debian-python ---------------------------------------------------------

def build_debian(out, rootfs):
    """One gzip layer from mmdebstrap's tarball, device nodes dropped
    (images carry none; the sandbox supplies /dev)."""
    lay = Layout(os.path.join(out, "debian-python"))
    tmp = os.path.join(lay.path, "layer.tmp")
    raw_hash = hashlib.sha256()

    class Tee(io.RawIOBase):
        def __init__(self, g):
            self.g = g

        def writable(self):
            return True

        def write(self, b):
            raw_hash.update(b)
            self.g.write(b)
            return len(b)

    with open(tmp, "wb") as f:
        gz = subprocess.Popen(["gzip", "-6", "-n", "-c"], stdin=subprocess.PIPE, stdout=f)
        tee = Tee(gz.stdin)
        with tarfile.open(rootfs, "r:") as src, \
                tarfile.open(fileobj=tee, mode="w|", format=tarfile.PAX_FORMAT) as dst:
            for ti in src:
                if ti.ischr() or ti.isblk() or ti.isfifo():
                    continue
                name = ti.name
                if name.startswith("./"):
                    name = name[2:]
                if name in ("", "."):
                    continue
                ti.name = name
                if ti.islnk() and ti.linkname.startswith("./"):
                    ti.linkname = ti.linkname[2:]
                dst.addfile(ti, src.extractfile(ti) if ti.isreg() else None)
        gz.stdin.close()
        if gz.wait() != 0:
            raise SystemExit("gzip failed")
    d, s = lay.blob_file(tmp)
    lay.image([(MT_GZIP, d, s)],
              config(["sha256:" + raw_hash.hexdigest()], Env=[PATH_ENV], Cmd=["python3"]),
              tag="latest")
    lay.finish()


def main():
    what, out = sys.argv[1], sys.argv[2]
    if what == "busybox":
        build_busybox(out)
    elif what == "wheel":
        build_wheel(out)
    elif what == "hostile":
        build_hostile(out)
    elif what == "debian-python":
        build_debian(out, sys.argv[3])
    else:
        raise SystemExit("unknown image " + what)


if __name__ == "__main__":
    main()
