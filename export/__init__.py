"""The export stage: from a trained model to the engine bundle the runtime flashes and runs.

Heavy dependencies (torch, onnx, onnxsim, tensorrt) are imported here and never by ``edgeseg``.
The steps (distil, prune, fold, ONNX, quantise, build) arrive with the export-stage issues.
"""
