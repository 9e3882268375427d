"""edgeseg: real-time instance segmentation on edge devices.

The runtime half (this package) is lean by design: numpy, OpenCV, an inference backend and the
sinks; it never imports torch. The export half lives in the ``export`` package.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

#: Largest image (width x height) OpenCV itself decodes in this process: 16384 x 16384.
#: The first guard against decompression bombs is ``source.max_pixels``, checked on the header
#: before decoding (``edgeseg.sources.imageheader``); this is the second, for formats whose
#: header edgeseg does not read. OpenCV reads the variable once, when ``cv2`` is loaded, so it is
#: set here, before any module imports ``cv2``; a value the user set is left alone.
MAX_IMAGE_PIXELS = 1 << 28
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
