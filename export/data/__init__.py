"""Training data for the export stage: the synthetic shapes dataset and demo video
(:mod:`export.data.synthetic`), and the check of a COCO instances dataset before training
(:mod:`export.data.coco_check`). Neither imports torch."""
