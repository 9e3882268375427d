"""Training of EdgeSeg models on COCO-format data (torch; the export stage only).

    dataset.py      COCO images + instances json -> letterboxed samples (augmented at train time only)
    assign.py       task-aligned assignment of ground truth to anchors
    losses.py       class (BCE on IoU-aware targets), box (GIoU), mask (cropped BCE) losses
    trainer.py      the loop: AdamW/SGD, cosine LR, EMA, AMP on CUDA, validation, resumable
    checkpoints.py  the checkpoint format: save atomically, load with weights_only, refuse misfits
    cli.py          ``edgeseg train``
"""
