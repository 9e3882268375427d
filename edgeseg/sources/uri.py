"""Reading source URIs: scheme, path, file kinds, and a log-safe form.

Kept apart from the sources themselves so that the registry in ``__init__`` and every source
agree on what a URI means, and so that credentials are masked in one place only.
"""

from __future__ import annotations

import re
from pathlib import Path

#: Suffixes (lower case) that OpenCV decodes as still images.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm",
     ".pnm", ".jp2", ".sr", ".ras"}
)
#: Suffixes (lower case) that are opened as video files through FFmpeg.
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv",
     ".wmv", ".ogv", ".3gp", ".h264", ".264", ".h265", ".265", ".hevc", ".mjpeg", ".mjpg"}
)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
#: Where a URI begins: ``scheme://`` at the start of a text or after a space, quote or bracket.
_URI_START = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://")
#: A new URI after whitespace or a quote ends the one before (so a password holding ``x://``
#: stays in its URI, while two URIs of one log line are masked each on its own).
_NEXT_URI = re.compile(r"[\s'\"][A-Za-z][A-Za-z0-9+.-]*://")
#: What must follow the ``@`` that ends a userinfo: a host (name, IPv4 or [IPv6]) and an optional
#: port, then the end of the authority.
_HOST_AFTER_AT = re.compile(
    r"@(?:[A-Za-z0-9._~%-]*|\[[0-9A-Fa-f:.%A-Za-z]*\])(?::[0-9]*)?(?=[/?#\s'\"),;\]>]|$)"
)
#: ``user:secret@host`` without a scheme (a broker given as ``user:pass@host:1883``); not after
#: ``/`` so that a file path like ``/data/a:b@c.jpg`` is left alone.
_BARE_CREDENTIALS = re.compile(r"(?<![A-Za-z0-9._~%/:-])([A-Za-z0-9._~%-]+):(?!//)([^\s@]+)@(?=[A-Za-z0-9\[])")
#: Query or fragment parameters whose name says they hold a secret (``?password=``, ``&token=``).
_SECRET_PARAM = re.compile(
    r"([?&;#])([^=&#;\s]*(?:pass|pwd|token|key|secret|auth|sig|credential)[^=&#;\s]*)=([^&#;\s]*)",
    re.IGNORECASE,
)
MASK = "***"
_GLOB_MAGIC = re.compile(r"[*?[]")
_DIGITS = re.compile(r"(\d+)")


def split_scheme(uri: str) -> tuple[str | None, str]:
    """(lower-case scheme, the rest after ``://``), or (None, uri) for a plain path.

    Not ``urllib.parse``: it reads ``file://clip.mp4`` as host ``clip.mp4`` with an empty path,
    while Jetson tooling means the relative file ``clip.mp4``.
    """
    match = _SCHEME.match(uri)
    if match is None:
        return None, uri
    return match.group(1).lower(), match.group(2)


def _mask_userinfo(text: str) -> str:
    """Each ``scheme://userinfo@host`` of ``text`` with the password part of userinfo masked.

    The userinfo runs to the LAST ``@`` that is followed by a host, whatever it holds before
    (``/``, spaces, ``#``, a raw ``@``, %-escapes): a password is opaque, and masking a little
    too much of a log line is better than showing half a password.
    """
    out: list[str] = []
    pos = 0
    for start in _URI_START.finditer(text):
        if start.start() < pos:
            continue  # inside the userinfo already masked
        authority = start.end()
        following = _NEXT_URI.search(text, authority)
        line_end = text.find("\n", authority)
        end = min(e for e in (following.start() if following else len(text),
                              line_end if line_end >= 0 else len(text)))
        at = text.rfind("@", authority, end)
        while at >= 0 and _HOST_AFTER_AT.match(text, at) is None:
            at = text.rfind("@", authority, at)
        if at < 0:
            continue
        user, colon, _password = text[authority:at].partition(":")
        if not colon:
            continue  # a user name alone is not a secret
        out.append(text[pos:authority])
        out.append(f"{user}:{MASK}")
        pos = at
    out.append(text[pos:])
    return "".join(out)


def mask_credentials(uri: str) -> str:
    """``uri`` (or any text holding URIs) with passwords replaced by ``***``, for log lines,
    errors and frame metadata: the password of a ``scheme://user:password@host`` userinfo
    (up to the last ``@`` before the host, so ``/``, spaces, ``#`` and ``@`` in a password stay
    hidden), of a bare ``user:password@host``, and the value of query parameters named like a
    secret (password, pass, pwd, token, key, secret, auth, sig; any case)."""
    text = _mask_userinfo(uri)
    text = _BARE_CREDENTIALS.sub(rf"\1:{MASK}@", text)
    return _SECRET_PARAM.sub(rf"\1\2={MASK}", text)


def has_glob_magic(text: str) -> bool:
    """True when ``text`` contains glob wildcards (``*``, ``?``, ``[``)."""
    return _GLOB_MAGIC.search(text) is not None


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def natural_key(path: Path) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts ``img2.jpg`` before ``img10.jpg`` (numbers compare as numbers).

    Each piece is tagged (0 for numbers, 1 for text) so that numbers and text never compare
    directly, which would raise in Python 3.
    """
    text = str(path)
    parts = tuple((0, int(p)) if p.isdigit() else (1, p.lower()) for p in _DIGITS.split(text) if p)
    return (*parts, (1, text))  # the full text last: "img01" and "img1" still sort the same way
