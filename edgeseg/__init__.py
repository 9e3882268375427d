"""edgeseg: real-time instance segmentation on edge devices.

The runtime half (this package) is lean by design: numpy, OpenCV, an inference backend and the
sinks; it never imports torch. The export half lives in the ``export`` package.
"""

__version__ = "0.1.0"
