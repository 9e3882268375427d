"""The export stage: from a trained model to the engine bundle the runtime flashes and runs.

Heavy dependencies (torch, onnx, onnxsim, tensorrt) are imported here and never by ``edgeseg``.
Its floor is Python 3.11, above the runtime's 3.8: torch 2.13's CPU wheel and the ONNX Runtime
quantisation API that ``export.quantize`` uses (``save_tensors_data``; Python 3.10 gets at most
ONNX Runtime 1.23, which lacks it). On an older interpreter importing
``export`` fails with an ImportError whose message says so, which the CLI prints as one line.
"""

import platform
import sys

#: The oldest Python the export stage runs on (torch 2.13, ONNX Runtime's quantisation API); the
#: runtime needs only 3.8.
EXPORT_MIN_PYTHON = (3, 11)

if sys.version_info < EXPORT_MIN_PYTHON:
    raise ImportError(
        f"the export stage needs Python {EXPORT_MIN_PYTHON[0]}.{EXPORT_MIN_PYTHON[1]} or newer (torch 2.13, "
        f"ONNX Runtime quantisation); this is {platform.python_version()}: export on a workstation, "
        "the device needs only the runtime",
        name="export",
    )
