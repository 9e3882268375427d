"""Width and height of an encoded image, read from its header without decoding it.

A decompression bomb is a small file that decodes into a huge image: a 76 KB PNG of
20000x20000 grey pixels takes 2.4 GB of memory in ``cv2.imdecode``, enough to kill a 4 GB
Jetson. The size must therefore be known *before* decoding. OpenCV 4.x has no header-only API
(``cv2.imdecode`` allocates the whole image; ``ImageCollection``/``imcount`` do not give sizes),
and Pillow is not a runtime dependency (JetPack images do not ship it and it would be a second
decoder only to read 8 to 30 bytes), so the few header layouts of the formats edgeseg reads are
parsed here. Every reader is bounded: it looks only at the bytes it is given and returns None
when a header is not what it expects, in which case the caller treats the size as unknown.

OpenCV's own ``OPENCV_IO_MAX_IMAGE_PIXELS`` (set in ``edgeseg/__init__``) is the second guard,
for content this module does not know (EXR, HDR, GIF, AVIF... behind an image extension).
"""

from __future__ import annotations

import re
import struct
from typing import Callable, Optional, Tuple

#: (width, height) in pixels.
Size = Tuple[int, int]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"
#: JPEG start-of-frame markers (C0..CF without DHT C4, JPG C8, DAC CC): they carry the size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: JPEG markers without a length field: TEM, RST0..7, SOI, EOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})
_JPEG_FILL = 0xFF
_TIFF_LE = b"II*\x00"
_TIFF_BE = b"MM\x00*"
_TIFF_WIDTH_TAG = 256
_TIFF_HEIGHT_TAG = 257
_TIFF_SHORT = 3
_TIFF_LONG = 4
_TIFF_ENTRY_BYTES = 12
_BMP_CORE_HEADER = 12
_RAS_MAGIC = b"\x59\xa6\x6a\x95"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
#: JP2 files put ``ihdr`` inside the first few boxes; look no further than this.
_JP2_HEADER_SEARCH_BYTES = 4096
_WEBP_VP8_START = b"\x9d\x01\x2a"
_WEBP_VP8L_SIGNATURE = 0x2F
_14_BITS = 0x3FFF
_PNM = re.compile(rb"\AP[1-6](?:\s+|#[^\n]*\n)+(\d+)(?:\s+|#[^\n]*\n)+(\d+)")
_PAM_WIDTH = re.compile(rb"^WIDTH\s+(\d+)", re.MULTILINE)
_PAM_HEIGHT = re.compile(rb"^HEIGHT\s+(\d+)", re.MULTILINE)


def _png(data: bytes) -> Optional[Size]:
    # The IHDR chunk must come first: length (4), "IHDR", width (4), height (4).
    if data[12:16] != b"IHDR" or len(data) < 24:
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg(data: bytes) -> Optional[Size]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != _JPEG_FILL:
            return None
        marker = data[pos + 1]
        if marker == _JPEG_FILL:  # fill bytes before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return (width, height) if height else None  # 0: height given later (DNL), unknown here
        pos += 2 + length
    return None


def _tiff(data: bytes) -> Optional[Size]:
    order = "<" if data.startswith(_TIFF_LE) else ">"
    if len(data) < 8:
        return None
    (ifd,) = struct.unpack(order + "I", data[4:8])
    if ifd + 2 > len(data):
        return None
    (count,) = struct.unpack(order + "H", data[ifd:ifd + 2])
    found: dict[int, int] = {}
    for i in range(count):
        entry = ifd + 2 + i * _TIFF_ENTRY_BYTES
        if entry + _TIFF_ENTRY_BYTES > len(data):
            break
        tag, kind = struct.unpack(order + "HH", data[entry:entry + 4])
        if tag in (_TIFF_WIDTH_TAG, _TIFF_HEIGHT_TAG):
            if kind == _TIFF_SHORT:
                (found[tag],) = struct.unpack(order + "H", data[entry + 8:entry + 10])
            elif kind == _TIFF_LONG:
                (found[tag],) = struct.unpack(order + "I", data[entry + 8:entry + 12])
    if _TIFF_WIDTH_TAG in found and _TIFF_HEIGHT_TAG in found:
        return found[_TIFF_WIDTH_TAG], found[_TIFF_HEIGHT_TAG]
    return None


def _bmp(data: bytes) -> Optional[Size]:
    if len(data) < 26:
        return None
    (header,) = struct.unpack("<I", data[14:18])
    if header == _BMP_CORE_HEADER:
        width, height = struct.unpack("<HH", data[18:22])
        return width, height
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height means rows stored top-down


def _webp(data: bytes) -> Optional[Size]:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == _WEBP_VP8_START and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & _14_BITS, height & _14_BITS
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == _WEBP_VP8L_SIGNATURE:
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & _14_BITS) + 1, ((bits >> 14) & _14_BITS) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


def _pnm(data: bytes) -> Optional[Size]:
    match = _PNM.match(data)
    if match is not None:
        return int(match.group(1)), int(match.group(2))
    if data.startswith(b"P7"):
        width, height = _PAM_WIDTH.search(data), _PAM_HEIGHT.search(data)
        if width is not None and height is not None:
            return int(width.group(1)), int(height.group(1))
    return None


def _sun_raster(data: bytes) -> Optional[Size]:
    if len(data) < 12:
        return None
    width, height = struct.unpack(">II", data[4:12])
    return width, height


def _jp2(data: bytes) -> Optional[Size]:
    at = data.find(b"ihdr", 0, _JP2_HEADER_SEARCH_BYTES)
    if at < 0 or at + 12 > len(data):
        return None
    height, width = struct.unpack(">II", data[at + 4:at + 12])
    return width, height


def _j2k(data: bytes) -> Optional[Size]:
    # SIZ: marker (2), Lsiz (2), Rsiz (2), Xsiz, Ysiz, XOsiz, YOsiz (4 each), after SOC (2).
    if len(data) < 24:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[8:24])
    return max(xsiz - xosiz, 0), max(ysiz - yosiz, 0)


#: (test on the first bytes, reader) for every format whose header is read here.
_READERS: Tuple[Tuple[Callable[[bytes], bool], Callable[[bytes], Optional[Size]]], ...] = (
    (lambda d: d.startswith(_PNG_SIGNATURE), _png),
    (lambda d: d.startswith(_JPEG_SOI), _jpeg),
    (lambda d: d.startswith((_TIFF_LE, _TIFF_BE)), _tiff),
    (lambda d: d.startswith(b"BM"), _bmp),
    (lambda d: d.startswith(b"RIFF") and d[8:12] == b"WEBP", _webp),
    (lambda d: d[:1] == b"P" and d[1:2] in b"1234567", _pnm),
    (lambda d: d.startswith(_RAS_MAGIC), _sun_raster),
    (lambda d: d.startswith(_JP2_SIGNATURE), _jp2),
    (lambda d: d.startswith(_J2K_SOC_SIZ), _j2k),
)


def image_size(data: bytes) -> Optional[Size]:
    """(width, height) from the header of an encoded PNG, JPEG, TIFF, BMP, WebP, PNM, Sun raster
    or JPEG 2000 image, or None when the format is another or the header cannot be read."""
    for matches, reader in _READERS:
        if matches(data):
            try:
                return reader(data)
            except (struct.error, ValueError):
                return None
    return None
