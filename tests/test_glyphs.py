"""Tests of the glyphs generator: determinism, distinct classes, held-out styles, LVIS buckets,
folder ownership, COCO/LVIS output, and one tiny training run on it."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dlde.data.coco import CocoDetection
from dlde.data.glyph_vocabulary import FAMILIES, GlyphClass, GlyphRenderer, build_vocabulary, class_similarity
from dlde.data.glyphs import MANIFEST_NAME, GlyphsConfig, default_glyphs_root, make_glyphs_dataset, plan_glyphs
from dlde.data.long_tail import assign_classes, bucket_sizes, frequency
from dlde.train import TrainConfig, train

# Ten classes (3 rare, 4 common, 3 frequent) on 48 px canvases: ~200 small training canvases.
SMALL = dict(classes=10, canvas_size=48, glyph_size=(12, 24), glyphs_per_image=(2, 4), val_images=8, max_images=110)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """One small glyphs dataset shared by the read-only tests."""
    return make_glyphs_dataset(tmp_path_factory.mktemp("glyphs") / "small", seed=1, **SMALL)


def test_same_seed_same_files(small, tmp_path):
    again = make_glyphs_dataset(tmp_path / "again", seed=1, **SMALL)
    assert _files(again.root) == _files(small.root)
    other = make_glyphs_dataset(tmp_path / "other", seed=2, **SMALL)
    assert other.train_annotations.read_bytes() != small.train_annotations.read_bytes()


def test_classes_are_distinct_and_recorded(small):
    manifest = _json(small.root / MANIFEST_NAME)
    threshold = manifest["args"]["max_similarity"]
    assert manifest["vocabulary"]["max_similarity"] == threshold == GlyphsConfig.max_similarity
    styles = [style for family in manifest["args"]["families"] for style in FAMILIES[family]]
    classes = [GlyphClass(c["code_point"], tuple(c["train_styles"]), tuple(c["val_styles"]))
               for c in manifest["classes"]]
    assert len(classes) == 10 and len({c.code_point for c in classes}) == 10
    assert class_similarity(classes, GlyphRenderer(styles)).max() <= threshold
    categories = _json(small.train_annotations)["categories"]
    for category, glyph in zip(categories, classes):
        assert category["code_point"] == glyph.code_point and category["unicode_name"] == glyph.unicode_name
        assert category["name"] == glyph.name and re.fullmatch(r"[a-z0-9_]+", category["name"])


def test_a_larger_vocabulary_keeps_no_alike_pair():
    styles = [style for family in ("dejavu-sans", "stix") for style in FAMILIES[family]]
    renderer = GlyphRenderer(styles)
    classes = build_vocabulary(styles, 150, 0.8, renderer)
    assert class_similarity(classes, renderer).max() <= 0.8
    # The measure sees what a reader sees: Latin A and Greek Alpha are one shape, 'o' and 'O' too.
    alike = [GlyphClass(0x41, ("DejaVu Sans",), ()), GlyphClass(0x391, ("DejaVu Sans",), ()),
             GlyphClass(ord("o"), ("DejaVu Sans",), ()), GlyphClass(ord("O"), ("DejaVu Sans",), ())]
    similarity = class_similarity(alike, renderer)
    assert similarity[0, 1] > 0.99 and similarity[2, 3] > 0.8 and similarity[0, 2] < 0.8
    # A smaller vocabulary is a prefix of a larger one (the order does not depend on a seed).
    assert build_vocabulary(styles, 40, 0.8, GlyphRenderer(styles)) == classes[:40]


def test_val_styles_absent_from_train(small):
    manifest = _json(small.root / MANIFEST_NAME)
    train_styles = {a["style"] for a in _json(small.train_annotations)["annotations"]}
    val_styles = {a["style"] for a in _json(small.val_annotations)["annotations"]}
    assert train_styles and val_styles and not train_styles & val_styles
    assert train_styles <= set(manifest["styles"]["train"]) and val_styles <= set(manifest["styles"]["val"])
    assert not set(manifest["styles"]["train"]) & set(manifest["styles"]["val"])


def test_buckets_as_recorded(small):
    manifest = _json(small.root / MANIFEST_NAME)
    train_json = _json(small.train_annotations)
    pairs = [(a["image_id"], a["category_id"]) for a in train_json["annotations"]]
    assert len(set(pairs)) == len(pairs)  # a class at most once per image
    images_per_class = Counter(category for _, category in pairs)
    recorded = {c["id"]: c for c in train_json["categories"]}
    for category_id, category in recorded.items():
        assert images_per_class[category_id] == category["image_count"] == category["instance_count"]
        assert category["frequency"] == frequency(category["image_count"])
    realized = Counter(frequency(count) for count in images_per_class.values())
    assert manifest["buckets"]["counts"] == {"r": 3, "c": 4, "f": 3} == dict(realized)
    assert manifest["train_images"] == len(train_json["images"])
    assert max(images_per_class.values()) <= manifest["buckets"]["ranges"]["f"][1] == SMALL["max_images"]
    assert _json(small.val_annotations)["categories"] == train_json["categories"]


def test_lvis_buckets_and_placement():
    assert bucket_sizes(1203, GlyphsConfig.bucket_shares) == (337, 461, 405)
    assert sum(bucket_sizes(1000, GlyphsConfig.bucket_shares)) == 1000 and bucket_sizes(5, (1, 0, 0)) == (5, 0, 0)
    assert [frequency(n) for n in (1, 10, 11, 100, 101)] == ["r", "r", "c", "c", "f"]
    counts, capacities = np.array([5, 3, 3, 1]), np.array([3, 3, 2, 2, 2])
    canvases = assign_classes(np.random.default_rng(0), counts, capacities)
    assert [len(labels) for labels in canvases] == capacities.tolist()
    assert all(len(set(labels.tolist())) == len(labels) for labels in canvases)
    assert np.bincount(np.concatenate(canvases), minlength=4).tolist() == counts.tolist()
    with pytest.raises(ValueError, match="distinct canvases"):
        assign_classes(np.random.default_rng(0), np.array([7, 5]), np.array([2] * 6))


def test_coco_and_lvis_fields(small):
    train, val = (CocoDetection(folder, annotations) for folder, annotations in
                  ((small.train_images_dir, small.train_annotations), (small.val_images_dir, small.val_annotations)))
    assert train.num_classes == val.num_classes == 10 and train.category_ids == list(range(1, 11))
    image, boxes = train[0]
    assert image.shape == (3, 48, 48) and len(boxes) >= 1
    x1, y1, x2, y2 = boxes[:, :4].unbind(1)
    assert (x2 - x1).min() >= 1 and (x2 - x1).max() <= 24 and (y2 - y1).max() <= 24
    val_json = _json(small.val_annotations)
    present = {(a["image_id"], a["category_id"]) for a in val_json["annotations"]}
    for record in val_json["images"]:
        assert record["not_exhaustive_category_ids"] == []
        absent = {c for c in range(1, 11) if (record["id"], c) not in present}
        assert record["neg_category_ids"] == sorted(absent)


def test_reuse_and_refuse(small, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in small.root.rglob("*") if p.is_file()}
    make_glyphs_dataset(small.root, seed=1, **SMALL)  # same arguments: reused, nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in small.root.rglob("*") if p.is_file()} == before
    with pytest.raises(ValueError, match=r"generated with other arguments: seed=1 \(wanted 3\)"):
        make_glyphs_dataset(small.root, seed=3, **SMALL)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=f"is not empty and holds no {MANIFEST_NAME}"):
        make_glyphs_dataset(foreign, seed=1, **SMALL)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_default_root_and_bad_arguments(tmp_path):
    root = default_glyphs_root(tmp_path, **SMALL)
    assert root.parent == tmp_path and re.fullmatch(r"glyphs-[0-9a-f]{12}", root.name)
    assert default_glyphs_root(tmp_path, **{**SMALL, "glyph_size": [12, 24]}) == root
    assert default_glyphs_root(tmp_path, **{**SMALL, "seed": 1}) != root
    with pytest.raises(ValueError, match="unknown glyphs parameter"):
        default_glyphs_root(tmp_path, glyph_sizes=(1, 2))
    with pytest.raises(ValueError, match="cells of the canvas"):
        GlyphsConfig(canvas_size=48, glyph_size=(12, 24), glyphs_per_image=(2, 5))
    with pytest.raises(ValueError, match="bucket_shares"):
        GlyphsConfig(bucket_shares=(1, -1, 1))
    with pytest.raises(ValueError, match="families"):
        GlyphsConfig(families=("comic-sans",))
    with pytest.raises(ValueError, match="does not fit on the"):
        make_glyphs_dataset(tmp_path / "crowded", **{**SMALL, "bucket_shares": (9, 0, 1)})
    assert not (tmp_path / "crowded").exists()


def test_one_tiny_training_epoch(tmp_path):
    config = TrainConfig.from_dict({
        "run_dir": str(tmp_path / "run"), "data_root": str(tmp_path / "data"), "dataset": "glyphs",
        "glyphs_classes": 10, "glyphs_canvas_size": 64, "glyphs_size": (12, 24), "glyphs_per_image": (2, 4),
        "glyphs_val_images": 4, "glyphs_max_images": 110, "min_size": 64, "max_size": 64, "epochs": 1,
        "max_train_batches": 2, "init_batches": 1, "threads": 1}, preset="tiny")
    result = train(config)
    assert len(result.metrics) == 1 and np.isfinite(result.metrics[0]["train_loss"])
    assert len(result.class_names) == 10
    assert json.loads((tmp_path / "data" / MANIFEST_NAME).read_text())["complete"]


@pytest.mark.slow
def test_an_lvis_sized_vocabulary_and_plan():
    styles = GlyphsConfig().styles()
    renderer = GlyphRenderer(styles)
    classes = build_vocabulary(styles, 1203, GlyphsConfig.max_similarity, renderer)
    assert len({c.code_point for c in classes}) == 1203
    assert class_similarity(classes, renderer).max() <= GlyphsConfig.max_similarity
    plan = plan_glyphs(GlyphsConfig(classes=1203))
    assert np.bincount(plan.buckets).tolist() == [337, 461, 405]
    realized = Counter(frequency(n) for n in np.bincount(np.concatenate(plan.train_canvases)).tolist())
    assert dict(realized) == {"r": 337, "c": 461, "f": 405}
