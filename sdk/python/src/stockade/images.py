"""``client.images``: the daemon's image store (``/v1/images``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from ._http import seg
from .errors import StockadeConnectionError, StockadeError

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Images", "PullProgress"]

PullProgress = Callable[[Dict[str, Any]], None]
"""Called with each event of a pull as a dict: ``event`` (``resolved``,
``progress``, ``unpacking``, ``layer-done``) plus the event's fields —
``resolved``: ``digest``, ``layers`` (``[{digest, size, present}]``);
``progress``: ``layer``, ``done``, ``total`` (bytes); ``unpacking`` and
``layer-done``: ``layer``."""

Creds = Union[Tuple[str, str], Mapping[str, str]]
"""``(username, password)`` or ``{"username": ..., "password": ...}``."""


def _creds(creds: Creds) -> Dict[str, str]:
    if isinstance(creds, Mapping):
        return {"username": str(creds["username"]), "password": str(creds["password"])}
    user, password = creds
    return {"username": str(user), "password": str(password)}


class Images:
    """The images of one daemon: ``pull``, ``list``, ``inspect``,
    ``remove``, ``prune``. Names are as ``stockade pull`` takes them
    (``python:3.11``, ``localhost:5000/app@sha256:...``, or a local source
    ``oci:DIR[:TAG]``, ``oci-archive:FILE``, ``docker-archive:FILE`` under a
    directory the daemon allows with ``--allow-bind-root``)."""

    def __init__(self, client: "Client") -> None:
        self._client = client

    def pull(
        self,
        ref: str,
        progress: Optional[PullProgress] = None,
        creds: Optional[Creds] = None,
        *,
        timeout: Optional[float] = None,
    ) -> Dict[str, Any]:
        """Pulls ``ref`` into the daemon's store and returns the image
        (``digest``, ``names``, ``size``). ``progress`` gets every event as
        it comes. ``creds`` replace the daemon's own registry credentials
        for this pull. Raises ``StockadeError`` with the daemon's code:
        ``image_not_found`` (404), ``registry_unauthorized`` (403),
        ``registry_unreachable`` / ``registry_error`` (502),
        ``invalid_request`` (400, a bad reference), ...; ``timeout`` bounds
        the wait for each event."""
        body: Dict[str, Any] = {"image": ref}
        if creds is not None:
            body["creds"] = _creds(creds)
        with self._client.transport.sse("POST", "/v1/images/pull", json_body=body, timeout=timeout) as stream:
            for ev in stream:
                doc = ev.json()
                data: Dict[str, Any] = dict(doc) if isinstance(doc, dict) else {}
                if ev.event == "done":
                    return data
                if ev.event == "error":
                    status = data.get("status")
                    code = data.get("code")
                    message = data.get("error")
                    raise StockadeError(
                        status if isinstance(status, int) else 500,
                        code if isinstance(code, str) else "unknown",
                        message if isinstance(message, str) else "the pull failed, and the daemon did not say why",
                    )
                if progress is not None:
                    progress({"event": ev.event, **data})
        raise StockadeConnectionError("connection_lost", f"the pull of {ref} ended before the daemon said how")

    def list(self) -> List[Dict[str, Any]]:
        """Every image, one entry per name: ``repository``, ``tag``,
        ``digest``, ``size`` (bytes, unpacked), ``created`` (RFC 3339 or
        ``None``)."""
        doc = self._client.transport.call("GET", "/v1/images")
        items = doc.get("images", []) if isinstance(doc, dict) else []
        return [dict(i) for i in items if isinstance(i, dict)]

    def inspect(self, ref: str) -> Dict[str, Any]:
        """An image: ``digest``, ``names``, ``size``, ``created``,
        ``layers`` and its configuration blob ``config`` (StockadeError 404
        if the store does not have it)."""
        doc = self._client.transport.call("GET", f"/v1/images/{seg(ref)}")
        return dict(doc) if isinstance(doc, dict) else {}

    def remove(self, ref: str, force: bool = False) -> Dict[str, Any]:
        """Removes a name (or, given a digest, the image and all its names);
        the image's layers go when nothing else uses them. An image a
        sandbox uses is refused (StockadeError 409) unless ``force``, which
        removes only the name. Returns what went: ``untagged``,
        ``images``, ``layers``, ``blobs``, ``bytes``."""
        doc = self._client.transport.call(
            "DELETE", f"/v1/images/{seg(ref)}", query=[("force", "true" if force else "false")]
        )
        return dict(doc) if isinstance(doc, dict) else {}

    def prune(self) -> Dict[str, Any]:
        """Removes layers, blobs and untagged images that no tagged image
        and no live sandbox uses; returns what went (as ``remove``)."""
        doc = self._client.transport.call("POST", "/v1/images/prune")
        return dict(doc) if isinstance(doc, dict) else {}
