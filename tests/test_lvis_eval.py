"""Tests of LVIS-style evaluation (frequency buckets, 300 detections per image, federated rules) against
hand-computed values, and of the LVIS v1 annotation format in CocoDetection.

Every box of a toy below is exact or misses its class's ground truth entirely, so a class's AP is the same
at every IoU threshold and follows from the ranking of its detections alone. COCO's 101-point
interpolation (recall thresholds 0, 0.01, ..., 1; precision made non-increasing from the right) gives:

- TP only: 1.
- FP, TP (one ground truth box): precision 1/2 at recall 1, so 1/2 at all 101 points: 0.5.
- TP, FP, TP (two boxes): recall 1/2 at precision 1, recall 1 at precision 2/3; the 51 points
  0..0.50 read 1 and the 50 points 0.51..1 read 2/3: (51 + 50 * 2/3) / 101 = 253/303.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from dlde.data.coco import CocoDetection
from dlde.evaluation import coco_metrics, dataset_metrics, evaluate, lvis_metrics, max_detections_for, uses_lvis
from dlde.train import TrainConfig, evaluate_model

TP_FP_TP = 253 / 303


def approx(expected):
    """COCOeval's precision is tp / (tp + fp + eps): exact up to rounding."""
    return pytest.approx(expected, rel=1e-12, abs=1e-12)
SIZE = (100, 100)  # (h, w) of every toy image
A, B, C, D = [10, 10, 40, 40], [50, 10, 40, 40], [10, 50, 40, 40], [50, 50, 40, 40]  # x, y, w, h; 40 x 40 is "medium"


def _xyxy(box):
    x, y, w, h = box
    return [x, y, x + w, y + h]


def _detections(dataset: CocoDetection, rows) -> list[dict]:
    """rows: (image id, category id, [x, y, w, h], score) -> one detection dict per dataset index."""
    out = []
    for image_id in dataset.image_ids:
        mine = [r for r in rows if r[0] == image_id]
        out.append({"boxes": torch.tensor([_xyxy(r[2]) for r in mine], dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.tensor([r[3] for r in mine], dtype=torch.float32),
                    "labels": torch.tensor([dataset.category_ids.index(r[1]) for r in mine], dtype=torch.int64)})
    return out


def _write(tmp_path: Path, data: dict, files: dict[int, str]) -> tuple[Path, Path]:
    images_dir = tmp_path / "images"
    for name in files.values():
        (images_dir / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (SIZE[1], SIZE[0]), color=(40, 40, 40)).save(images_dir / name)
    annotation_file = tmp_path / "annotations.json"
    annotation_file.write_text(json.dumps(data))
    return images_dir, annotation_file


# ------------------------------------------------------------------- buckets, exclusion, per-image cap
BUCKET_CATEGORIES = [  # id, name, frequency
    (1, "alpha", "r"), (2, "beta", "c"), (3, "gamma", "f"), (4, "delta", "r"), (5, "epsilon", "r"),
]
BUCKET_BOXES = [(1, 1, A), (1, 3, D), (2, 2, A), (2, 3, B), (2, 5, C)]  # image id, category id, box
BUCKET_DETECTIONS = [  # image id, category id, box, score
    (1, 1, A, 0.9),  # alpha: TP -> 1
    (1, 2, B, 0.8), (2, 2, A, 0.6),  # beta: FP above TP -> 0.5
    (1, 3, D, 0.9), (2, 3, D, 0.8), (2, 3, B, 0.7),  # gamma: TP, FP, TP -> 253/303
    (2, 4, D, 0.95),  # delta: no ground truth anywhere -> left out of every mean
    (2, 5, A, 0.9), (2, 5, C, 0.5),  # epsilon: FP above TP -> 0.5
]


@pytest.fixture
def buckets(tmp_path) -> CocoDetection:
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": SIZE[0], "width": SIZE[1]} for i in (1, 2)],
        "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "iscrowd": 0}
                        for k, (i, c, b) in enumerate(BUCKET_BOXES)],
        "categories": [{"id": c, "name": n, "frequency": f} for c, n, f in BUCKET_CATEGORIES],
    }
    return CocoDetection(*_write(tmp_path, data, {1: "1.png", 2: "2.png"}))


def test_per_class_ap_and_bucket_means_match_hand_computed(buckets):
    assert buckets.frequencies == ["r", "c", "f", "r", "r"] and not buckets.is_federated
    metrics = lvis_metrics(buckets, _detections(buckets, BUCKET_DETECTIONS))
    assert metrics["per_class"] == approx({"alpha": 1.0, "beta": 0.5, "gamma": TP_FP_TP,
                                           "epsilon": 0.5})  # delta: no ground truth
    assert metrics["APr"] == approx((1.0 + 0.5) / 2)  # alpha, epsilon; not delta
    assert metrics["APc"] == approx(0.5)
    assert metrics["APf"] == approx(TP_FP_TP)
    mean = (1.0 + 0.5 + TP_FP_TP + 0.5) / 4
    for key in ("AP", "AP50", "AP75", "AP_medium"):
        assert metrics[key] == approx(mean), key
    assert list(metrics) == ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "APr", "APc", "APf",
                             "per_class"]
    # Without federated fields the numbers of the classes are COCO's.
    coco = coco_metrics(buckets, _detections(buckets, BUCKET_DETECTIONS))
    assert coco["per_class"] == metrics["per_class"] and coco["AP"] == metrics["AP"]


def test_perfect_detections_score_one_in_every_bucket(buckets):
    perfect = [(i, c, b, 0.9) for i, c, b in BUCKET_BOXES]
    metrics = lvis_metrics(buckets, _detections(buckets, perfect))
    assert [metrics[key] for key in ("AP", "APr", "APc", "APf")] == approx([1.0] * 4)


def test_classes_without_detections_score_zero(buckets):
    metrics = lvis_metrics(buckets, _detections(buckets, [(1, 3, D, 0.9), (2, 3, B, 0.8)]))
    assert (metrics["APf"], metrics["APc"], metrics["APr"]) == approx((1.0, 0.0, 0.0))
    assert metrics["AP"] == approx(1 / 4)  # alpha, beta, epsilon 0; gamma 1


def test_bucket_without_ground_truth_is_nan(tmp_path):
    data = {"images": [{"id": 1, "file_name": "1.png", "height": SIZE[0], "width": SIZE[1]}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": A}],
            "categories": [{"id": 1, "name": "one", "frequency": "f"}, {"id": 2, "name": "two", "frequency": "c"}]}
    ds = CocoDetection(*_write(tmp_path, data, {1: "1.png"}))
    metrics = lvis_metrics(ds, _detections(ds, [(1, 1, A, 0.9), (1, 2, B, 0.8)]))
    assert (metrics["APf"], metrics["AP"]) == approx((1.0, 1.0))
    assert math.isnan(metrics["APc"]) and math.isnan(metrics["APr"])


def test_max_detections_count_per_image_over_all_classes(buckets):
    # In image 1, two detections of delta (no ground truth) outrank the true alpha box.
    rows = [(1, 4, B, 0.9), (1, 4, C, 0.8), (1, 1, A, 0.7)]
    assert lvis_metrics(buckets, _detections(buckets, rows), max_detections=3)["per_class"]["alpha"] == approx(1.0)
    assert lvis_metrics(buckets, _detections(buckets, rows), max_detections=2)["per_class"]["alpha"] == 0.0
    # COCOeval's own cap counts per image and class: alpha keeps its one detection.
    assert coco_metrics(buckets, _detections(buckets, rows), max_detections=2)["per_class"]["alpha"] == approx(1.0)


def test_empty_detections_score_zero(buckets):
    metrics = lvis_metrics(buckets, [])
    assert metrics["AP"] == metrics["APr"] == metrics["APc"] == metrics["APf"] == 0.0


# ------------------------------------------------------------------------ the LVIS v1 format, federated
# Image 1: nothing annotated; n verified absent. Image 2: p, q, n annotated; q not exhaustively.
# Image 3: q annotated (exhaustively). Buckets: p rare, q common, n frequent; z (rare) has no boxes.
LVIS_CATEGORIES = [(1, "p", "r"), (2, "q", "c"), (3, "n", "f"), (4, "z", "r")]
LVIS_IMAGES = [  # id, coco_url, neg_category_ids, not_exhaustive_category_ids
    (1, "http://images.cocodataset.org/val2017/000000000001.jpg", [3], []),
    (2, "http://images.cocodataset.org/train2017/000000000002.jpg", [4], [2]),
    (3, "http://images.cocodataset.org/val2017/000000000003.jpg", [], []),
]
LVIS_BOXES = [(2, 1, A), (2, 2, B), (2, 3, C), (3, 2, A)]
LVIS_DETECTIONS = [
    (1, 1, D, 0.95),  # p in image 1, neither annotated nor negative there: not evaluated
    (1, 3, D, 0.9),  # n in image 1, where it is negative: a false positive
    (2, 1, A, 0.6),  # p: TP -> 1 (0.5 if the detection in image 1 counted)
    (2, 3, C, 0.6),  # n: FP, TP -> 0.5
    (2, 2, [0, 60, 30, 30], 0.9),  # q unmatched in image 2, where it is not exhaustive: ignored
    (2, 2, B, 0.6), (3, 2, [60, 60, 30, 30], 0.55), (3, 2, A, 0.5),  # q: TP, FP (image 3), TP -> 253/303
]
# The same detections under COCO's rules: p FP, TP -> 0.5; n 0.5; q FP, TP, FP, TP -> 0.5.


def _lvis_json(*, federated: bool = True) -> dict:
    images = []
    for image_id, url, neg, not_exhaustive in LVIS_IMAGES:
        image = {"id": image_id, "coco_url": url, "height": SIZE[0], "width": SIZE[1], "license": 1,
                 "flickr_url": url.replace("images.cocodataset.org", "farm.example"), "date_captured": "2013"}
        if federated:
            image |= {"neg_category_ids": neg, "not_exhaustive_category_ids": not_exhaustive}
        images.append(image)
    return {
        "info": {"version": "v1"}, "licenses": [{"id": 1, "name": "cc"}],
        "images": images,
        "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
                         "segmentation": [[b[0], b[1], b[0] + b[2], b[1], b[0] + b[2], b[1] + b[3]]]}
                        for k, (i, c, b) in enumerate(LVIS_BOXES)],  # no iscrowd, as in LVIS
        "categories": [{"id": c, "name": n, "frequency": f, "synset": f"{n}.n.01", "synonyms": [n], "def": n,
                        "image_count": 1, "instance_count": 1} for c, n, f in LVIS_CATEGORIES],
    }


# Image 1 lies at the top of images_dir (coco_url's last part), image 2 in train2017/ (its last two).
LVIS_FILES = {1: "000000000001.jpg", 2: "train2017/000000000002.jpg", 3: "000000000003.jpg"}


@pytest.fixture
def lvis(tmp_path) -> CocoDetection:
    return CocoDetection(*_write(tmp_path, _lvis_json(), LVIS_FILES))


def test_lvis_v1_format_loads(lvis, tmp_path):
    assert lvis.class_names == ["p", "q", "n", "z"] and lvis.frequencies == ["r", "c", "f", "r"]
    assert [lvis.image_path(i) for i in range(3)] == [tmp_path / "images" / LVIS_FILES[i] for i in (1, 2, 3)]
    assert lvis.is_federated
    assert lvis.neg_category_ids == [frozenset({3}), frozenset({4}), frozenset()]
    assert lvis.not_exhaustive_category_ids == [frozenset(), frozenset({2}), frozenset()]
    assert lvis.targets(1).tolist() == [[10, 10, 50, 50, 0], [50, 10, 90, 50, 1], [10, 50, 50, 90, 2]]
    image, annotations = lvis[1]
    assert image.shape == (3, *SIZE) and annotations.shape == (3, 5)


def test_federated_rules_match_hand_computed(lvis):
    metrics = lvis_metrics(lvis, _detections(lvis, LVIS_DETECTIONS))
    assert metrics["per_class"] == approx({"p": 1.0, "q": TP_FP_TP, "n": 0.5})
    assert (metrics["APr"], metrics["APc"], metrics["APf"]) == approx((1.0, TP_FP_TP, 0.5))
    assert metrics["AP"] == approx((1.0 + TP_FP_TP + 0.5) / 3)


def test_without_federated_fields_every_detection_counts(tmp_path):
    plain = CocoDetection(*_write(tmp_path, _lvis_json(federated=False), LVIS_FILES))
    assert not plain.is_federated and plain.neg_category_ids is None
    metrics = lvis_metrics(plain, _detections(plain, LVIS_DETECTIONS))
    assert metrics["per_class"] == approx({"p": 0.5, "q": 0.5, "n": 0.5})


def test_federated_rule_ignores_only_unmatched_detections(lvis):
    # q's only detections in image 2, where it is not exhaustive: the match counts, the miss does not.
    # One of q's two boxes found at precision 1: the 51 recall points 0..0.50 read 1, the others 0.
    rows = [(2, 2, [0, 60, 30, 30], 0.9), (2, 2, B, 0.6)]
    assert lvis_metrics(lvis, _detections(lvis, rows))["per_class"]["q"] == approx(51 / 101)
    # A detection of a class verified absent is a false positive, outranking the true box.
    rows = [(1, 3, D, 0.9), (2, 3, C, 0.6)]
    assert lvis_metrics(lvis, _detections(lvis, rows))["per_class"]["n"] == approx(0.5)


# ------------------------------------------------------------------------------ protocol choice, evaluate
class FixedModel(nn.Module):
    """Emits, for every image, ``junk`` boxes of class ``z`` scored 0.9 and the image's ground truth
    scored 0.8 (all in original pixels: the toy datasets have no transform)."""

    def __init__(self, dataset: CocoDetection, junk: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.dataset, self.junk, self.cursor = dataset, junk, 0

    def forward(self, images: torch.Tensor):
        outputs = []
        for _ in images:
            target = self.dataset.targets(self.cursor)
            self.cursor += 1
            boxes = torch.cat([torch.tensor([[60.0, 60.0, 90.0, 90.0]]).expand(self.junk, 4), target[:, :4]])
            probs = torch.zeros(len(boxes), self.dataset.num_classes)
            probs[: self.junk, 3] = 0.9
            probs[torch.arange(self.junk, len(boxes)), target[:, 4].long()] = 0.8
            outputs.append((boxes, probs))
        return outputs


def test_evaluate_uses_lvis_rules_and_300_detections(lvis):
    assert uses_lvis(lvis) and max_detections_for(lvis) == 300
    metrics = evaluate(FixedModel(lvis, junk=250), lvis, batch_size=2, progress=False)
    assert metrics["AP"] == approx(1.0) and {"APr", "APc", "APf"} <= metrics.keys()  # 250 + 3 < 300: all kept
    metrics = evaluate(FixedModel(lvis, junk=250), lvis, batch_size=2, progress=False, max_detections=100)
    assert metrics["AP"] == 0.0  # the true boxes rank below the 100 kept


def test_trainer_evaluation_reports_buckets(lvis):
    metrics = evaluate_model(FixedModel(lvis, junk=0), lvis, TrainConfig(eval_batch_size=2), "cpu")
    assert (metrics["AP"], metrics["APr"], metrics["APc"], metrics["APf"]) == approx((1.0,) * 4)
    assert metrics["per_class"] == approx({"p": 1.0, "q": 1.0, "n": 1.0})


def test_coco_datasets_keep_the_coco_protocol(tmp_path):
    data = {"images": [{"id": 1, "file_name": "1.png", "height": SIZE[0], "width": SIZE[1]}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": A}],
            "categories": [{"id": 7, "name": "seven"}]}
    ds = CocoDetection(*_write(tmp_path, data, {1: "1.png"}))
    assert ds.frequencies is None and not ds.is_federated and not uses_lvis(ds) and max_detections_for(ds) == 100
    detections = _detections(ds, [(1, 7, A, 0.9)])
    assert dataset_metrics(ds, detections) == coco_metrics(ds, detections)
    assert "APr" not in dataset_metrics(ds, detections)


# ------------------------------------------------------------------------------------- malformed files
@pytest.mark.parametrize("edit, message", [
    (lambda d: d["categories"][1].pop("frequency"), r"categories\[1\] lacks 'frequency'"),
    (lambda d: d["categories"][0].update(frequency="x"), "'frequency' must be one of r, c, f"),
    (lambda d: d["images"][2].pop("neg_category_ids"), r"images\[2\] lacks 'neg_category_ids'"),
    (lambda d: d["images"][0].update(neg_category_ids=[99]), r"unknown category ids \[99\]"),
    (lambda d: d["images"][0].update(not_exhaustive_category_ids="2"), "must be a list of category ids"),
    (lambda d: d["images"][0].update(coco_url=5), "'coco_url' must be a URL string"),
])
def test_malformed_lvis_fields_raise(tmp_path, edit, message):
    data = _lvis_json()
    edit(data)
    with pytest.raises(ValueError, match=message):
        CocoDetection(*_write(tmp_path, data, LVIS_FILES))


def test_missing_image_named_by_coco_url_raises(tmp_path):
    files = dict(LVIS_FILES)
    files[3] = "elsewhere/000000000003.jpg"
    with pytest.raises(FileNotFoundError, match="000000000003.jpg does not exist"):
        CocoDetection(*_write(tmp_path, _lvis_json(), files))
