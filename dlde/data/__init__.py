"""Datasets and batching: COCO-format detection data, the generated digits and glyphs datasets, transforms."""
