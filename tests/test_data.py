"""Tests of the digits generator, the COCO dataset, the transform and collate."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlde.data.coco import CocoDetection
from dlde.data.digits import make_digits_dataset
from dlde.data.transforms import DetectionTransform, collate

SMALL = dict(canvas_size=64, digit_size=(12, 20), train_images=12, val_images=6)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# ----------------------------------------------------------------------------- digits


def test_digits_deterministic_for_a_seed(tmp_path):
    a = make_digits_dataset(tmp_path / "a", seed=3, **SMALL)
    b = make_digits_dataset(tmp_path / "b", seed=3, **SMALL)
    files_a, files_b = _files(a.root), _files(b.root)
    assert len(files_a) == 12 + 6 + 3  # images, two JSON files, dlde_digits.json
    assert files_a == files_b
    c = make_digits_dataset(tmp_path / "c", seed=4, **SMALL)
    assert a.train_annotations.read_bytes() != c.train_annotations.read_bytes()
    assert (a.train_images_dir / "000001.png").read_bytes() != (
        c.train_images_dir / "000001.png"
    ).read_bytes()


def test_digits_coco_layout_and_geometry(tmp_path):
    paths = make_digits_dataset(tmp_path, seed=0, **SMALL, digits_per_image=(2, 3))
    coco = json.loads(paths.train_annotations.read_text())
    assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
    assert [c["name"] for c in coco["categories"]] == [str(d) for d in range(10)]
    assert len(coco["images"]) == 12
    for img in coco["images"]:
        assert (img["width"], img["height"]) == (64, 64)
        with Image.open(paths.train_images_dir / img["file_name"]) as pil:
            assert pil.mode == "RGB" and pil.size == (64, 64)
    boxes = np.array([a["bbox"] for a in coco["annotations"]], dtype=float)
    owner = np.array([a["image_id"] for a in coco["annotations"]])
    assert np.all(boxes[:, 2] == boxes[:, 3])  # pasted squares
    assert np.all((boxes[:, 2] >= 12) & (boxes[:, 2] <= 20))
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, :2] + boxes[:, 2:] <= 64)
    assert [a["area"] for a in coco["annotations"]] == list(boxes[:, 2] * boxes[:, 3])
    counts = np.bincount(owner)[1:]
    assert counts.min() >= 2 and counts.max() <= 3
    # No two boxes of one image overlap.
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    iw = np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None])
    ih = np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None])
    overlap = (iw > 0) & (ih > 0) & (owner[:, None] == owner[None])
    np.fill_diagonal(overlap, False)
    assert not overlap.any()


def test_digits_split_is_disjoint_and_recorded(tmp_path):
    paths = make_digits_dataset(tmp_path, seed=1, **SMALL)
    manifest = json.loads((paths.root / "dlde_digits.json").read_text())
    train, val = set(manifest["train_source_indices"]), set(manifest["val_source_indices"])
    assert not train & val
    assert len(train | val) == 1797
    assert 0.18 < len(val) / 1797 < 0.22
    for annotation_file, pool in ((paths.train_annotations, train), (paths.val_annotations, val)):
        used = {a["digit_index"] for a in json.loads(annotation_file.read_text())["annotations"]}
        assert used <= pool
    other = json.loads(
        (make_digits_dataset(tmp_path / "s2", seed=2, **SMALL).root / "dlde_digits.json").read_text()
    )
    assert set(other["val_source_indices"]) != val


def test_digits_classes_subset(tmp_path):
    from sklearn.datasets import load_digits

    target = load_digits().target
    paths = make_digits_dataset(tmp_path, seed=0, classes=[5, 0, 2], **SMALL)
    coco = json.loads(paths.val_annotations.read_text())
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "0"), (3, "2"), (6, "5")]
    assert {a["category_id"] for a in coco["annotations"]} <= {1, 3, 6}
    for a in coco["annotations"]:
        assert target[a["digit_index"]] + 1 == a["category_id"]
    manifest = json.loads((paths.root / "dlde_digits.json").read_text())
    assert set(target[manifest["train_source_indices"]]) == {0, 2, 5}
    ds = CocoDetection(paths.val_images_dir, paths.val_annotations)
    assert ds.category_ids == [1, 3, 6] and ds.class_names == ["0", "2", "5"]
    _, ann = ds[0]
    assert set(ann[:, 4].tolist()) <= {0.0, 1.0, 2.0}


def test_digits_reuse_and_refuse_other_arguments(tmp_path):
    paths = make_digits_dataset(tmp_path, seed=0, **SMALL)
    image = paths.train_images_dir / "000001.png"
    os.utime(image, (0, 0))
    make_digits_dataset(tmp_path, seed=0, **SMALL)
    assert image.stat().st_mtime == 0  # identical arguments: nothing rewritten
    with pytest.raises(ValueError, match="train_images=12 \\(wanted 5\\)"):
        make_digits_dataset(tmp_path, seed=0, **{**SMALL, "train_images": 5})
    assert image.stat().st_mtime == 0  # other arguments: refused, nothing rewritten
    assert len(list(paths.train_images_dir.glob("*.png"))) == 12


def test_digits_folder_holding_only_an_interrupted_atomic_claim_is_still_ours(tmp_path):
    # dlde.files' temporary manifest, left by a claim killed while writing it (the older
    # "dlde_digits.json.tmp" is covered in test_reliability_data.py).
    (tmp_path / ".dlde_digits.json.k3j9x.tmp").write_text('{"gener')
    paths = make_digits_dataset(tmp_path, seed=0, **SMALL)
    assert json.loads((paths.root / "dlde_digits.json").read_text())["complete"]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))  # stale temporary removed


def test_digits_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="without overlap"):
        make_digits_dataset(tmp_path, canvas_size=32, digit_size=(30, 30), digits_per_image=(2, 2))
    with pytest.raises(ValueError, match="does not fit"):
        make_digits_dataset(tmp_path, canvas_size=32, digit_size=(20, 40))
    with pytest.raises(ValueError, match="classes"):
        make_digits_dataset(tmp_path, classes=[3, 11])
    with pytest.raises(ValueError, match="digits_per_image"):
        make_digits_dataset(tmp_path, digits_per_image=(3, 1))


def test_digits_load_through_coco_dataset(tmp_path):
    paths = make_digits_dataset(tmp_path, seed=0, **SMALL)
    ds = CocoDetection(paths.train_images_dir, paths.train_annotations)
    coco = json.loads(paths.train_annotations.read_text())
    image, ann = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    first = [a for a in coco["annotations"] if a["image_id"] == ds.image_ids[0]]
    x, y, w, h = first[0]["bbox"]
    torch.testing.assert_close(
        ann[0], torch.tensor([x, y, x + w, y + h, first[0]["category_id"] - 1.0])
    )
    # Ink lies inside the box: the digit is brighter than the dark background.
    assert image[0, y : y + h, x : x + w].max() > 0.5


# ----------------------------------------------------------------------------- COCO dataset


def _write_images(folder: Path, sizes: dict[str, tuple[int, int]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (h, w) in sizes.items():
        Image.new("L", (w, h), color=200).save(folder / name)  # grayscale: converted to RGB


def _base_coco() -> dict:
    return {
        "images": [
            {"id": 10, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 20, "file_name": "b.png", "width": 20, "height": 50},
            {"id": 30, "file_name": "c.png", "width": 16, "height": 16},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 12, "bbox": [1, 2, 10, 5], "iscrowd": 0},
            {"id": 2, "image_id": 20, "category_id": 3, "bbox": [0, 0, 20, 50]},
            {"id": 3, "image_id": 10, "category_id": 7, "bbox": [5, 5, 3, 4], "iscrowd": 1},
            {"id": 4, "image_id": 10, "category_id": 3, "bbox": [20.5, 10, 4.5, 8]},
        ],
        "categories": [
            {"id": 12, "name": "twelve"},
            {"id": 3, "name": "three"},
            {"id": 7, "name": "seven"},
        ],
    }


@pytest.fixture
def coco_dir(tmp_path):
    _write_images(tmp_path / "img", {"a.png": (30, 40), "b.png": (50, 20), "c.png": (16, 16)})
    return tmp_path


def _dataset(root: Path, coco: dict, transform=None) -> CocoDetection:
    path = root / "ann.json"
    path.write_text(json.dumps(coco))
    return CocoDetection(root / "img", path, transform=transform)


def test_coco_noncontiguous_ids_crowd_and_empty(coco_dir):
    ds = _dataset(coco_dir, _base_coco())
    assert len(ds) == 3 and ds.num_classes == 3
    assert ds.category_ids == [3, 7, 12]
    assert ds.class_names == ["three", "seven", "twelve"]
    assert ds.image_ids == [10, 20, 30]
    image, ann = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    torch.testing.assert_close(image, torch.full((3, 30, 40), 200 / 255))
    # File order kept; the crowd box is excluded; xywh -> corners; label = rank of the id.
    torch.testing.assert_close(
        ann, torch.tensor([[1, 2, 11, 7, 2], [20.5, 10, 25, 18, 0]], dtype=torch.float32)
    )
    torch.testing.assert_close(ds[1][1], torch.tensor([[0.0, 0, 20, 50, 0]]))
    empty = ds[2][1]
    assert empty.shape == (0, 5) and empty.dtype == torch.float32
    assert ds.meta(1) == {"image_id": 20, "orig_size": (50, 20), "scale": 1.0}
    assert str(ds.annotation_file).endswith("ann.json")


def _mutate(coco: dict, path: tuple, value) -> dict:
    """Sets ``value`` at ``path`` inside ``coco`` (``None`` deletes the key); returns it."""
    *parents, last = path
    node = coco
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return coco


BAD_INPUTS = [  # (where, new value or None to delete, expected message)
    pytest.param(("annotations",), None, "missing top-level key 'annotations'", id="no-anns"),
    pytest.param(
        ("annotations", 1, "bbox"), None, r"annotations\[1\]: missing key 'bbox'", id="no-bbox"
    ),
    pytest.param(
        ("images", 2, "file_name"), None, r"images\[2\]: missing key 'file_name'", id="no-file"
    ),
    pytest.param(
        ("categories", 0, "name"), None, r"categories\[0\]: missing key 'name'", id="no-name"
    ),
    pytest.param(
        ("annotations", 0, "image_id"), 99, r"annotations\[0\]: unknown image_id 99",
        id="unknown-image",
    ),
    pytest.param(
        ("annotations", 3, "category_id"), 4, r"annotations\[3\]: unknown category_id 4",
        id="unknown-category",
    ),
    pytest.param(
        ("annotations", 0, "bbox"), [1, 2, -3, 4], r"annotations\[0\]: bbox has negative",
        id="negative-width",
    ),
    pytest.param(
        ("annotations", 2, "bbox"), [1, 2, float("nan"), 4],
        r"annotations\[2\]: bbox must be 4 finite", id="nan-box",
    ),
    pytest.param(
        ("annotations", 0, "bbox"), [1, 2, 3], r"annotations\[0\]: bbox must be 4",
        id="short-box",
    ),
    pytest.param(
        ("images", 0, "width"), -40, r"images\[0\]: height and width must be positive",
        id="negative-size",
    ),
    pytest.param(
        ("images", 1, "height"), float("inf"), r"images\[1\]: 'height' must be a finite",
        id="infinite-size",
    ),
    pytest.param(
        ("images", 1, "id"), 10, r"images\[1\]: duplicate image id 10", id="duplicate-image"
    ),
    pytest.param(
        ("categories", 2, "id"), 3, r"categories\[2\]: duplicate category id 3",
        id="duplicate-category",
    ),
    pytest.param(("images", 0, "id"), "10", r"images\[0\]: 'id' must be an integer", id="str-id"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_INPUTS)
def test_coco_bad_input_raises_naming_file_and_record(coco_dir, path, value, message):
    with pytest.raises(ValueError, match=message) as info:
        _dataset(coco_dir, _mutate(_base_coco(), path, value))
    assert "ann.json" in str(info.value)


def test_coco_missing_image_file(coco_dir):
    (coco_dir / "img" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"images\[1\] \(id 20\): image file .*b.png"):
        _dataset(coco_dir, _base_coco())


def test_coco_malformed_and_missing_json(coco_dir):
    path = coco_dir / "broken.json"
    path.write_text('{"images": [}')
    with pytest.raises(ValueError, match="broken.json: malformed JSON"):
        CocoDetection(coco_dir / "img", path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="broken.json: expected a JSON object"):
        CocoDetection(coco_dir / "img", path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDetection(coco_dir / "img", coco_dir / "nope.json")


def test_coco_image_size_mismatch(coco_dir):
    ds = _dataset(coco_dir, _mutate(_base_coco(), ("images", 0, "width"), 41))
    with pytest.raises(ValueError, match="a.png: image is 30x40"):
        ds[0]


def test_coco_degenerate_boxes_dropped_with_one_warning(coco_dir):
    coco = _base_coco()
    coco["annotations"] += [
        {"id": 5, "image_id": 10, "category_id": 3, "bbox": [1, 1, 0, 5]},
        {"id": 6, "image_id": 30, "category_id": 7, "bbox": [1, 1, 5, 0]},
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _dataset(coco_dir, coco)
    assert len(caught) == 1
    assert "dropped 2 degenerate boxes" in str(caught[0].message)
    assert ds[0][1].shape == (2, 5) and ds[2][1].shape == (0, 5)


def test_coco_meta_reports_transform_scale(coco_dir):
    ds = _dataset(coco_dir, _base_coco(), transform=DetectionTransform(min_size=60, max_size=100))
    assert ds.meta(0) == {"image_id": 10, "orig_size": (30, 40), "scale": 2.0}
    assert ds.meta(1)["scale"] == 2.0  # 50x20 -> 150x60 would exceed 100: long side 100
    image, ann = ds[0]
    assert image.shape == (3, 64, 96)  # 60x80 padded to multiples of 32
    torch.testing.assert_close(ann[:, :4], ds.targets(0)[:, :4] * 2)


# ----------------------------------------------------------------------------- transforms


def test_transform_scale_rule():
    t = DetectionTransform(min_size=100, max_size=150)
    assert t.scale(50, 60) == 2.0  # short side -> 100, long 120 <= 150
    assert t.scale(50, 100) == 1.5  # 100x200 would exceed 150: long side -> 150
    assert t.scale(400, 200) == 0.375
    assert t.resized_size(50, 100) == (75, 150)


def _box_image(h, w, box):
    image = torch.zeros(3, h, w)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 1.0
    return image, torch.tensor([[x1, y1, x2, y2, 4.0]])


def _ink_box(image, mean, std):
    """Corners (x1, y1, x2, y2) of the pixels brighter than half, after un-normalizing."""
    raw = image * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    ys, xs = torch.nonzero(raw[0] > 0.5, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


@pytest.mark.parametrize("flip", [False, True])
def test_transform_resize_flip_pad_keep_boxes_on_the_object(flip):
    t = DetectionTransform(min_size=60, max_size=200, flip_prob=float(flip), size_divisor=32)
    image, ann = _box_image(30, 45, (5, 10, 20, 25))
    out, out_ann = t(image, ann)
    assert out.shape == (3, 64, 96)  # 60x90 padded to multiples of 32
    assert torch.all(out[:, 60:] == 0) and torch.all(out[:, :, 90:] == 0)
    expected = torch.tensor([10.0, 20, 40, 50])
    if flip:
        expected = torch.tensor([90 - 40.0, 20, 90 - 10, 50])
    torch.testing.assert_close(out_ann[0, :4], expected)
    assert out_ann[0, 4] == 4.0
    torch.testing.assert_close(_ink_box(out, t.mean, t.std), expected)
    assert ann[0, 0] == 5  # input not modified


def test_transform_normalizes_and_handles_empty_targets():
    t = DetectionTransform(min_size=32, max_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    out, ann = t(torch.ones(3, 32, 32), torch.zeros(0, 5))
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([2.0, 1.0, 0.5]))
    assert ann.shape == (0, 5)


def test_transform_flip_is_seeded():
    image, ann = _box_image(32, 32, (0, 0, 8, 8))
    flips = []
    for _ in range(2):
        t = DetectionTransform(min_size=32, max_size=32, flip_prob=0.5, seed=7)
        flips.append([t(image, ann)[1][0, 0].item() for _ in range(20)])
    assert flips[0] == flips[1]
    assert set(flips[0]) == {0.0, 24.0}


def test_transform_bad_arguments():
    with pytest.raises(ValueError, match="min_size"):
        DetectionTransform(min_size=100, max_size=50)
    with pytest.raises(ValueError, match="flip_prob"):
        DetectionTransform(flip_prob=1.5)
    with pytest.raises(TypeError):
        DetectionTransform(100, 200)  # keyword-only
    with pytest.raises(ValueError, match=r"\(M, 5\)"):
        DetectionTransform()(torch.zeros(3, 8, 8), torch.zeros(4))


def test_collate_pads_images_and_targets():
    batch = [
        (torch.ones(3, 32, 64), torch.tensor([[1.0, 2, 3, 4, 0], [5, 6, 7, 8, 1]])),
        (torch.full((3, 64, 32), 2.0), torch.zeros(0, 5)),
    ]
    images, targets = collate(batch)
    assert images.shape == (2, 3, 64, 64) and targets.shape == (2, 2, 5)
    assert torch.all(images[0, :, :32] == 1) and torch.all(images[0, :, 32:] == 0)
    assert torch.all(images[1, :, :, :32] == 2) and torch.all(images[1, :, :, 32:] == 0)
    torch.testing.assert_close(targets[0], batch[0][1])
    assert torch.all(targets[1] == -1)
    images, targets = collate([(torch.ones(3, 8, 8), torch.zeros(0, 5))])
    assert targets.shape == (1, 1, 5) and torch.all(targets == -1)
