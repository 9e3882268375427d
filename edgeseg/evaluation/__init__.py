"""Accuracy evaluation against annotated data (COCO protocol)."""
