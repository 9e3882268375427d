"""Keep OpenCV's and FFmpeg's own stderr lines out of edgeseg's log.

A dropped RTSP stream makes FFmpeg print "[tcp @ 0x...] Connection refused" and OpenCV a
"[ WARN:0@...]" line on every reconnect attempt, unprefixed and outside the logging system;
edgeseg already logs one line per attempt naming the URI (with its password masked). Both are
silenced unless the user has set OPENCV_FFMPEG_LOGLEVEL or OPENCV_LOG_LEVEL, or asked for debug.
"""

from __future__ import annotations

import logging
import os

import cv2

#: FFmpeg's AV_LOG_QUIET.
_FFMPEG_QUIET = "-8"
#: OpenCV's LOG_LEVEL_ERROR (cv::utils::logging::LogLevel), for builds without ``cv2.utils.logging``.
_OPENCV_LOG_LEVEL_ERROR = 2
_done = False


def quiet_opencv_logs() -> None:
    """Silence native OpenCV/FFmpeg logging once per process (no-op at debug level)."""
    global _done
    if _done or logging.getLogger("edgeseg").isEnabledFor(logging.DEBUG):
        return
    _done = True
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", _FFMPEG_QUIET)
    if "OPENCV_LOG_LEVEL" not in os.environ:
        # OpenCV 5 and some 4.x builds have cv2.utils.logging; the 4.x builds of PyPI (4.11) and
        # JetPack (4.5, 4.8) have only cv2.setLogLevel, which takes the same levels.
        logging_module = getattr(getattr(cv2, "utils", None), "logging", None)
        if logging_module is not None:
            logging_module.setLogLevel(logging_module.LOG_LEVEL_ERROR)
        elif hasattr(cv2, "setLogLevel"):
            cv2.setLogLevel(_OPENCV_LOG_LEVEL_ERROR)
