"""Tests of COCO metrics and of the evaluation loop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from dlde.data.coco import CocoDetection
from dlde.data.transforms import DetectionTransform
from dlde.evaluation import coco_metrics, evaluate

# Non-contiguous category ids listed out of order: labels are 0 -> 2 ("cat"), 1 -> 5 ("dog"),
# 2 -> 9 ("owl"); "owl" has no ground truth at all.
CATEGORIES = [{"id": 9, "name": "owl"}, {"id": 2, "name": "cat"}, {"id": 5, "name": "dog"}]
IMAGES = {11: (60, 80), 22: (100, 50), 33: (40, 40)}  # image id -> (h, w)
BOXES = [  # image id, category id, [x, y, w, h]; medium-sized so AP_medium is defined
    (11, 2, [5, 5, 40, 40]),
    (11, 5, [44, 10, 35, 45]),
    (22, 5, [0, 20, 50, 60]),
    (22, 2, [10, 0, 33, 18]),
]


@pytest.fixture
def coco_files(tmp_path) -> tuple[Path, Path]:
    images_dir = tmp_path / "img"
    images_dir.mkdir()
    for image_id, (h, w) in IMAGES.items():
        Image.new("RGB", (w, h), color=(30, 30, 30)).save(images_dir / f"{image_id}.png")
    coco = {
        "images": [
            {"id": i, "file_name": f"{i}.png", "width": w, "height": h}
            for i, (h, w) in IMAGES.items()
        ],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "iscrowd": 0}
            for k, (i, c, b) in enumerate(BOXES)
        ]
        # A crowd region (ignored by COCOeval) and a degenerate box (dropped everywhere).
        + [
            {"id": 90, "image_id": 33, "category_id": 2, "bbox": [0, 0, 40, 40], "iscrowd": 1},
            {"id": 91, "image_id": 33, "category_id": 5, "bbox": [3, 3, 0, 10]},
        ],
        "categories": CATEGORIES,
    }
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text(json.dumps(coco))
    return images_dir, annotation_file


@pytest.fixture
def dataset(coco_files) -> CocoDetection:
    with pytest.warns(UserWarning, match="dropped 1 degenerate"):
        return CocoDetection(*coco_files)


def _perfect(ds: CocoDetection, shift: float = 0.0) -> list[dict]:
    detections = []
    for i in range(len(ds)):
        target = ds.targets(i)
        detections.append(
            {
                "boxes": target[:, :4] + shift,
                "scores": torch.linspace(0.9, 0.5, len(target)),
                "labels": target[:, 4].long(),
            }
        )
    return detections


def test_perfect_detections_score_one(dataset):
    metrics = coco_metrics(dataset, _perfect(dataset))
    for key in ("AP", "AP50", "AP75", "AP_small", "AP_medium"):
        assert metrics[key] == pytest.approx(1.0), key
    assert math.isnan(metrics["AP_large"])  # no large ground truth
    assert metrics["per_class"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}


def test_shifted_detections_score_below_one(dataset):
    metrics = coco_metrics(dataset, _perfect(dataset, shift=6.0))
    assert 0.0 < metrics["AP"] < 1.0
    assert metrics["AP75"] < metrics["AP50"] <= 1.0


def test_metrics_match_pycocotools_summarize(coco_files, tmp_path):
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images_dir, annotation_file = coco_files
    coco = json.loads(annotation_file.read_text())
    coco["annotations"] = [a for a in coco["annotations"] if a["bbox"][2] > 0]
    for a in coco["annotations"]:  # plain COCOeval needs "area"; coco_metrics fills it in
        a["area"] = a["bbox"][2] * a["bbox"][3]
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps(coco))
    ds = CocoDetection(images_dir, clean)
    detections = _perfect(ds, shift=3.0)
    metrics = coco_metrics(ds, detections)

    results = [
        {"image_id": ds.image_ids[i], "category_id": ds.category_ids[int(label)],
         "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)}
        for i, det in enumerate(detections)
        for (x1, y1, x2, y2), score, label in zip(
            det["boxes"].tolist(), det["scores"], det["labels"])
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(clean))
        reference = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    expected = [math.nan if v < 0 else v for v in reference.stats[:6]]
    got = [metrics[k] for k in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")]
    assert got == pytest.approx(expected, nan_ok=True)
    assert 0.0 < metrics["AP"] < 1.0


def test_empty_detections_score_zero(dataset):
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}
    for detections in ([], [empty] * len(dataset)):
        metrics = coco_metrics(dataset, detections)
        assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0 and metrics["AP75"] == 0.0
        assert metrics["per_class"] == {"cat": 0.0, "dog": 0.0}


def test_labels_map_back_to_category_ids(dataset):
    detections = _perfect(dataset)
    # Only "dog" (label 1, category id 5) predicted right; "cat" boxes called "owl".
    for det in detections:
        det["labels"] = torch.where(det["labels"] == 0, 2, det["labels"])
    metrics = coco_metrics(dataset, detections)
    assert metrics["per_class"]["dog"] == pytest.approx(1.0)
    assert metrics["per_class"]["cat"] == 0.0
    assert "owl" not in metrics["per_class"]  # no ground truth: left out, not NaN
    assert metrics["AP"] == pytest.approx(0.5)


def test_bad_detections_raise(dataset):
    with pytest.raises(ValueError, match="one detection dict per dataset item"):
        coco_metrics(dataset, _perfect(dataset)[:2])
    detections = _perfect(dataset)
    detections[1]["labels"] = detections[1]["labels"] + 3
    with pytest.raises(ValueError, match=r"detections\[1\]: labels must be integers in \[0, 3\)"):
        coco_metrics(dataset, detections)


class GroundTruthModel(nn.Module):
    """Returns each image's ground truth in network-input pixels, optionally shifted.

    Relies on evaluate() visiting the dataset in order; checks it is called in eval mode.
    """

    def __init__(self, dataset: CocoDetection, *, shift: float = 0.0, num_classes: int = 3):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.dataset, self.shift, self.num_classes = dataset, shift, num_classes
        self.cursor = 0

    def forward(self, images: torch.Tensor):
        assert not self.training and not torch.is_grad_enabled()
        outputs = []
        for image in images:
            i = self.cursor
            self.cursor += 1
            target = self.dataset.targets(i)
            boxes = target[:, :4] * self.dataset.meta(i)["scale"] + self.shift
            probs = torch.full((len(target), self.num_classes), 0.1)
            probs[torch.arange(len(target)), target[:, 4].long()] = 0.8
            # A far-off box running past the image: clipped, and too low-scored to matter.
            boxes = torch.cat([boxes, torch.tensor([[1e4, 1e4, 2e4, 2e4]])])
            probs = torch.cat([probs, torch.full((1, self.num_classes), 0.01)])
            outputs.append((boxes.to(image.device), probs.to(image.device)))
        return outputs


def test_evaluate_maps_resized_predictions_back(coco_files):
    with pytest.warns(UserWarning):
        ds = CocoDetection(*coco_files, transform=DetectionTransform(min_size=96, max_size=160))
    assert {ds.meta(i)["scale"] for i in range(len(ds))} == {1.6, 2.4}  # resized for real
    model = GroundTruthModel(ds)
    model.train()
    metrics = evaluate(model, ds, batch_size=2, progress=False)
    assert model.training  # previous mode restored
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["per_class"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}

    shifted = evaluate(GroundTruthModel(ds, shift=12.0), ds, batch_size=3, progress=False)
    assert shifted["AP"] < 1.0


def test_evaluate_keeps_max_detections(coco_files):
    with pytest.warns(UserWarning):
        ds = CocoDetection(*coco_files)
    metrics = evaluate(GroundTruthModel(ds), ds, progress=False, max_detections=1)
    # One detection per image: only one of the two boxes of images 11 and 22 is found.
    assert 0.0 < metrics["AP"] < 1.0
    assert metrics["AP"] == pytest.approx(metrics["AP50"])
