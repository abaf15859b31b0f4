"""Datasets and batching: COCO-format detection data, the generated digits dataset, transforms."""
