"""Issue 12, data side: generated data never deletes what it did not write, and the COCO loader
passes the right data or refuses it with the file and record named."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlde.data.coco import CocoDetection, read_image
from dlde.data.digits import MANIFEST_NAME, default_digits_root, make_digits_dataset
from dlde.data.transforms import DetectionTransform, collate

SMALL = {"canvas_size": 64, "digit_size": (12, 20), "train_images": 4, "val_images": 2}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- digits: ownership


def test_digits_refuse_a_folder_they_did_not_write(tmp_path):
    root = tmp_path / "mine"
    (root / "train").mkdir(parents=True)
    Image.new("RGB", (8, 8), color=(1, 2, 3)).save(root / "train" / "photo.png")
    (root / "notes.txt").write_text("my own data")
    before = _files(root)
    with pytest.raises(ValueError, match=f"{re.escape(str(root))} is not empty and holds no {MANIFEST_NAME}"):
        make_digits_dataset(root, seed=0, **SMALL)
    assert _files(root) == before  # nothing deleted, nothing written


def test_digits_refuse_other_arguments_naming_them(tmp_path):
    make_digits_dataset(tmp_path, seed=0, **SMALL)
    before = _files(tmp_path)
    with pytest.raises(ValueError, match="other arguments") as info:
        make_digits_dataset(tmp_path, seed=1, **{**SMALL, "noise": 0.1})
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path) in message and "another data_root" in message
    assert "seed=0 (wanted 1)" in message and "noise=0.05 (wanted 0.1)" in message
    assert "canvas_size" not in message  # only the differing arguments are named
    assert _files(tmp_path) == before


def test_digits_write_into_empty_or_missing_folders_and_reuse_their_own(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    paths = make_digits_dataset(empty, seed=0, **SMALL)
    manifest = json.loads((empty / MANIFEST_NAME).read_text())
    assert manifest["complete"] is True and manifest["args"]["train_images"] == 4
    missing = make_digits_dataset(tmp_path / "a" / "b", seed=0, **SMALL)
    assert _files(missing.root) == _files(paths.root)
    os.utime(paths.train_images_dir / "000001.png", (0, 0))
    make_digits_dataset(empty, seed=0, **SMALL)  # the same arguments: reused, not rewritten
    assert (paths.train_images_dir / "000001.png").stat().st_mtime == 0


def test_digits_finish_an_interrupted_generation_of_their_own(tmp_path):
    reference = _files(make_digits_dataset(tmp_path / "ref", seed=0, **SMALL).root)
    root = tmp_path / "interrupted"
    make_digits_dataset(root, seed=0, **SMALL)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    (root / MANIFEST_NAME).write_text(json.dumps({**manifest, "complete": False}))
    (root / "val" / "000002.png").unlink()  # as if killed mid-write
    (root / "notes.txt").write_text("kept")
    make_digits_dataset(root, seed=0, **SMALL)
    assert _files(root) == {**reference, "notes.txt": b"kept"}
    # A claim killed while writing the manifest leaves only its temporary file: still ours.
    claimed = tmp_path / "claimed"
    claimed.mkdir()
    (claimed / f"{MANIFEST_NAME}.tmp").write_text("{")
    make_digits_dataset(claimed, seed=0, **SMALL)
    assert json.loads((claimed / MANIFEST_NAME).read_text())["complete"] is True


def test_digits_reuse_a_folder_written_by_the_previous_format(tmp_path):
    paths = make_digits_dataset(tmp_path, seed=0, **SMALL)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    legacy = {"format_version": 1, "args": manifest["args"],
              "train_source_indices": manifest["train_source_indices"],
              "val_source_indices": manifest["val_source_indices"]}
    (tmp_path / MANIFEST_NAME).unlink()
    (tmp_path / "dataset.json").write_text(json.dumps(legacy))
    os.utime(paths.train_images_dir / "000001.png", (0, 0))
    make_digits_dataset(tmp_path, seed=0, **SMALL)
    assert (paths.train_images_dir / "000001.png").stat().st_mtime == 0
    with pytest.raises(ValueError, match=r"seed=0 \(wanted 3\)"):
        make_digits_dataset(tmp_path, seed=3, **SMALL)


def test_digits_refuse_a_file_or_a_foreign_manifest(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        make_digits_dataset(tmp_path / "file", **SMALL)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST_NAME).write_text('{"generator": "someone else", "args": {}}')
    with pytest.raises(ValueError, match=f"bad/{MANIFEST_NAME}: not a digits manifest"):
        make_digits_dataset(tmp_path / "bad", **SMALL)


def test_default_digits_root_separates_parameters(tmp_path):
    root = default_digits_root(tmp_path, seed=0, **SMALL)
    assert root.parent == tmp_path and re.fullmatch(r"digits-[0-9a-f]{12}", root.name)
    # Equal arguments, however spelled (defaults omitted or given, lists or tuples): one folder.
    assert default_digits_root(tmp_path, **SMALL) == root
    assert default_digits_root(str(tmp_path), **{**SMALL, "digit_size": [12, 20], "classes": None}) == root
    assert default_digits_root(tmp_path, **SMALL, classes=range(10)) == root
    others = {default_digits_root(tmp_path, **{**SMALL, **change}) for change in
              ({"seed": 1}, {"train_images": 5}, {"noise": 0.1}, {"classes": (0, 1)}, {"digit_size": (12, 21)})}
    assert root not in others and len(others) == 5
    with pytest.raises(ValueError, match=r"unknown digits parameter\(s\) \['seeds'\]"):
        default_digits_root(tmp_path, seeds=1)
    with pytest.raises(ValueError, match="classes"):
        default_digits_root(tmp_path, classes=[11])
    # The derived folders keep two parameterizations apart where one shared folder refuses.
    for seed in (0, 1):
        make_digits_dataset(default_digits_root(tmp_path, seed=seed, **SMALL), seed=seed, **SMALL)
    assert len(list(tmp_path.glob("digits-*"))) == 2


# ----------------------------------------------------------------------------- COCO: pixel values


def _save(folder: Path, name: str, pil: Image.Image) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pil.save(folder / name)
    return folder / name


GRADIENT = np.arange(48, dtype=np.int64).reshape(6, 8)  # (H, W) distinct values


def _mode_cases():
    u8 = (GRADIENT * 5).astype(np.uint8)
    u16 = (GRADIENT * 1365).astype(np.uint16)  # up to 64155: saturates if taken as 8-bit
    rgb = np.stack([u8, 255 - u8, u8 // 2], axis=2)
    rgba = np.concatenate([rgb, np.full((6, 8, 1), 7, np.uint8)], axis=2)
    bits = (GRADIENT % 2).astype(bool)
    palette = Image.fromarray(rgb).quantize(colors=48, dither=Image.Dither.NONE)
    yield "L", "png", Image.fromarray(u8), np.repeat(u8[None] / 255, 3, 0)
    yield "LA", "png", Image.fromarray(np.stack([u8, u8], 2), "LA"), np.repeat(u8[None] / 255, 3, 0)
    yield "RGB", "png", Image.fromarray(rgb), rgb.transpose(2, 0, 1) / 255
    yield "RGBA", "png", Image.fromarray(rgba), rgb.transpose(2, 0, 1) / 255
    yield "P", "png", palette, np.asarray(palette.convert("RGB")).transpose(2, 0, 1) / 255
    yield "1", "png", Image.fromarray(bits), np.repeat(bits[None].astype(float), 3, 0)
    yield "I;16", "png", Image.fromarray(u16), np.repeat(u16[None] / 65535, 3, 0)
    i32 = (GRADIENT * 40_000_000).astype(np.int32)
    yield "I", "tif", Image.fromarray(i32), np.repeat(i32[None] / (2**31 - 1), 3, 0)
    f32 = (GRADIENT / 47).astype(np.float32)
    yield "F", "tif", Image.fromarray(f32), np.repeat(f32[None].astype(float), 3, 0)


@pytest.mark.parametrize(("mode", "ext", "pil", "expected"), list(_mode_cases()), ids=lambda v: str(v)[:6])
def test_images_of_every_mode_and_bit_depth_load_to_their_values(tmp_path, mode, ext, pil, expected):
    path = _save(tmp_path, f"x.{ext}", pil)
    with Image.open(path) as check:
        assert check.mode == mode  # the file really has the mode under test
    image = read_image(path)
    assert image.dtype == torch.float32 and image.shape == (3, 6, 8)
    torch.testing.assert_close(image, torch.from_numpy(expected).float(), atol=1e-6, rtol=0)


def test_sixteen_bit_png_through_the_dataset_is_not_white(tmp_path):
    value = np.full((10, 12), 1000, np.uint16)  # dark: 1000 / 65535
    _save(tmp_path / "img", "a.png", Image.fromarray(value))
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 12, "height": 10}], "annotations": [],
            "categories": [{"id": 1, "name": "x"}]}
    image, _ = _dataset(tmp_path, coco)[0]
    torch.testing.assert_close(image, torch.full((3, 10, 12), 1000 / 65535))


def test_out_of_range_integer_and_float_images_are_refused(tmp_path):
    path = _save(tmp_path, "neg.tif", Image.fromarray(np.full((4, 4), -5, np.int32)))
    with pytest.raises(ValueError, match="neg.tif: 32-bit integer image"):
        read_image(path)
    path = _save(tmp_path, "big.tif", Image.fromarray(np.full((4, 4), 2.5, np.float32)))
    with pytest.raises(ValueError, match=r"big.tif: float image with values outside \[0, 1\]"):
        read_image(path)


# ----------------------------------------------------------------------------- COCO: records


def _dataset(root: Path, coco: dict) -> CocoDetection:
    path = root / "ann.json"
    path.write_text(json.dumps(coco))
    return CocoDetection(root / "img", path)


def _coco(*bboxes, file_name="a.png") -> dict:
    return {"images": [{"id": 1, "file_name": file_name, "width": 40, "height": 30}],
            "annotations": [{"id": k + 1, "image_id": 1, "category_id": 5, "bbox": list(b)}
                            for k, b in enumerate(bboxes)],
            "categories": [{"id": 5, "name": "five"}]}


@pytest.fixture
def coco_dir(tmp_path):
    _save(tmp_path / "img", "a.png", Image.new("L", (40, 30), color=100))
    return tmp_path


def test_boxes_are_clipped_to_the_image_and_dropped_when_nothing_remains(coco_dir):
    coco = _coco([1, 2, 10, 5], [35, 25, 10, 10], [-3, -4, 8, 9], [50, 2, 5, 5], [40, 0, 3, 3],
                 [2, 2, 0, 4])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _dataset(coco_dir, coco)
    assert len(caught) == 1  # one warning per dataset load, naming the file and the counts
    message = str(caught[0].message)
    assert "ann.json" in message
    assert "clipped 4 boxes" in message and "2 of them lay fully outside" in message
    assert "dropped 1 degenerate" in message
    torch.testing.assert_close(ds.targets(0), torch.tensor(
        [[1.0, 2, 11, 7, 0], [35, 25, 40, 30, 0], [0, 0, 5, 5, 0]]))
    torch.testing.assert_close(ds[0][1], ds.targets(0))


@pytest.mark.parametrize(("bbox", "message"), [
    pytest.param([1, 2, 1e39, 4], "beyond float32", id="w-1e39"),
    pytest.param([1e39, 2, 3, 4], "beyond float32", id="x-1e39"),
    pytest.param([3e38, 2, 3e38, 4], "beyond float32", id="x+w-overflows"),
    pytest.param([1, 2, 3, -4], "has negative width or height", id="negative-h"),
    pytest.param([1, 2, 10**400, 4], "must be 4 finite numbers", id="int-beyond-float"),
])
def test_absurd_boxes_are_refused_naming_file_and_record(coco_dir, bbox, message):
    with pytest.raises(ValueError, match=r"ann.json: annotations\[1\]: bbox .*" + message):
        _dataset(coco_dir, _coco([1, 1, 2, 2], bbox))


def test_truncated_or_corrupt_images_fail_naming_the_file(coco_dir):
    rng = np.random.default_rng(0)
    _save(coco_dir / "img", "b.png", Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)))
    data = (coco_dir / "img" / "b.png").read_bytes()
    (coco_dir / "img" / "b.png").write_bytes(data[: len(data) // 2])
    (coco_dir / "img" / "c.png").write_bytes(b"not an image at all")
    coco = _coco()
    coco["images"] += [{"id": 2, "file_name": "b.png", "width": 40, "height": 30},
                       {"id": 3, "file_name": "c.png", "width": 40, "height": 30}]
    ds = _dataset(coco_dir, coco)
    assert ds[0][0].shape == (3, 30, 40)
    with pytest.raises(ValueError, match=r"img/b.png: cannot read image \(OSError: image file is truncated"):
        ds[1]
    with pytest.raises(ValueError, match=r"img/c.png: cannot read image \(UnidentifiedImageError"):
        ds[2]


@pytest.mark.parametrize("escape", ["../outside.png", "../img/../../outside.png", "ABSOLUTE"])
def test_file_names_stay_inside_images_dir(coco_dir, escape):
    _save(coco_dir, "outside.png", Image.new("L", (40, 30)))
    if escape == "ABSOLUTE":
        escape = str(coco_dir / "outside.png")
    with pytest.raises(ValueError, match=r"ann.json: images\[0\] \(id 1\): file_name .* points outside images_dir"):
        _dataset(coco_dir, _coco(file_name=escape))


def test_file_names_inside_images_dir_are_accepted(coco_dir):
    _save(coco_dir / "img" / "sub", "d.png", Image.new("L", (40, 30), color=50))
    for name in ("sub/d.png", "sub/../a.png", str(coco_dir / "img" / "sub" / "d.png")):
        assert _dataset(coco_dir, _coco(file_name=name))[0][0].shape == (3, 30, 40)
    with pytest.raises(ValueError, match=r"images\[0\]: 'file_name' must be a non-empty string"):
        _dataset(coco_dir, _coco(file_name=7))


# ----------------------------------------------------------------------------- transform, collate


def test_transform_returns_float32_for_any_float_image():
    t = DetectionTransform(min_size=32, max_size=48, size_divisor=16)
    image = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(0))
    ann = torch.tensor([[1.0, 2, 10, 12, 0]])
    reference, reference_ann = t(image, ann)
    out, out_ann = t(image.double(), ann.double())
    assert out.dtype == torch.float32 and out_ann.dtype == torch.float32
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(out_ann, reference_ann)


def test_transform_refuses_integer_and_non_finite_inputs():
    t = DetectionTransform(min_size=8, max_size=8)
    with pytest.raises(ValueError, match=r"floating point image .* torch.uint8 \(divide 8-bit images by 255\)"):
        t(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(0, 5))
    image = torch.zeros(3, 8, 8)
    image[1, 2, 3], image[0, 0, 0] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"image holds 2 non-finite"):
        t(image, torch.zeros(0, 5))
    with pytest.raises(ValueError, match="annotations hold non-finite"):
        t(torch.zeros(3, 8, 8), torch.tensor([[0.0, 0, float("inf"), 4, 0]]))


def test_collate_refuses_mixed_images_clearly():
    with pytest.raises(ValueError, match="one shape"):
        collate([(torch.zeros(3, 8, 8), torch.zeros(0, 5)), (torch.zeros(1, 8, 8), torch.zeros(0, 5))])
    with pytest.raises(ValueError, match="one dtype"):
        collate([(torch.zeros(3, 8, 8), torch.zeros(0, 5)), (torch.zeros(3, 8, 8).double(), torch.zeros(0, 5))])
