"""Knowledge distillation: teachers (EdgeSeg checkpoints, prototype-mask ONNX models), the
distillation terms, and the distiller that plugs them into the trainer (``edgeseg distill``)."""
