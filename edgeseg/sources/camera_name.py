"""A camera's name when the configuration gives none: derived from its source URI.

Events, snapshots and (with several cameras) MQTT topics carry the name, so it must be safe in
an MQTT topic level and a file name: ``[A-Za-z0-9_-]``, at most 64 characters. What a person
would call the camera: a file's or folder's stem, a network camera's host, a device's node.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Final
from urllib.parse import urlsplit

NAME_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"
"""What a camera name may be (MQTT-topic and file-name safe)."""
FALLBACK: Final = "camera"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def _clean(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-")[:64].strip("-")


def camera_name(uri: str) -> str:
    """The name for ``uri``: ``rtsp://user:pw@cam-door.local:554/s1`` -> ``cam-door-local``,
    ``v4l2:///dev/video0`` -> ``video0``, ``csi://0`` -> ``csi0``, ``clips/gate.mp4`` -> ``gate``;
    ``camera`` when nothing usable is left. Credentials never reach the name."""
    text = uri.strip()
    parts = urlsplit(text) if "://" in text else None
    if parts is not None and parts.scheme in ("rtsp", "rtsps", "http", "https", "rtmp"):
        base = parts.hostname or ""
    elif parts is not None and parts.scheme == "csi":
        base = f"csi{parts.netloc or parts.path.strip('/')}"
    elif parts is not None:  # v4l2:///dev/video0, file:///x/y.mp4
        base = PurePosixPath(parts.path).stem
    else:
        path = PurePosixPath(text.rstrip("/"))
        base = path.stem if path.suffix else path.name
        if any(ch in base for ch in "*?["):  # a glob: its folder
            base = path.parent.name
    return _clean(base) or FALLBACK
