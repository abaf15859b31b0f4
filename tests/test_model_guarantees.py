"""Issue 19: the model refuses what the trainer refuses, when called directly (a notebook, the
README's example): no silent zero detections, no poisoned BatchNorm, clear errors for bad data.

One test per case of the issue, numbered as there (case 7, the pipeline's figure index, is not a
model case)."""
import copy
import json
import warnings

import numpy as np
import pytest
import torch
from helpers import SMALL, batch_annotations, tiny_model

from dlde import DLDENetWithTrackedMeans, RetinaNet
from dlde.data.coco import CocoDetection
from dlde.model.growth import classifier_parameters
from dlde.model.inputs import MAX_ABS_PIXEL
from dlde.model.modes import snapshot_buffers, training_only
from dlde.model.tracking import track_batch


def _buffers(model):
    return {name: buffer.clone() for name, buffer in model.named_buffers()}


def _assert_buffers_equal(model, before):
    after = dict(model.named_buffers())
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name


def _detections(model, images):
    with torch.no_grad():
        return [len(boxes) for boxes, _ in model.eval()(images)]


# ------------------------------------------------- 1. a NaN pixel at inference: an error, not zero boxes
def test_a_nan_pixel_at_inference_is_refused_not_zero_detections():
    model = DLDENetWithTrackedMeans(classes=3, resnet=18, embedding_size=8, fpn_levels=[3, 4],
                                    pretrained=False).eval()
    images = torch.randn(2, 3, 64, 64)
    images[0, 0, 5, 5] = float("nan")
    with pytest.raises(FloatingPointError, match=r"non-finite values, NaN or infinite \(image 0 of 2\)") as info:
        model(images)
    assert "\n" not in str(info.value) and "check_inputs=False" in str(info.value)
    images[0, 0, 5, 5] = float("inf")
    with pytest.raises(FloatingPointError, match="image 0 of 2"):
        model.predict(images)


# --------------------------------------------- 2. absurd pixels and refused steps never poison BatchNorm
def test_huge_pixels_are_refused_before_batchnorm_sees_them():
    model = tiny_model(DLDENetWithTrackedMeans, fpn_levels=[3, 4]).train()
    clean = torch.randn(2, 3, 64, 64)
    reference = _detections(copy.deepcopy(model), clean)
    before = _buffers(model)
    images = clean.clone()
    images[1] = 1e20
    with pytest.raises(FloatingPointError, match=r"images hold values up to 1e\+20 .*image 1 of 2.*normalize"):
        model.train()(images, batch_annotations())
    _assert_buffers_equal(model, before)  # BatchNorm statistics, means and κ statistics untouched
    assert _detections(model, clean) == reference and sum(reference) > 0
    with pytest.raises(FloatingPointError, match="values up to"):
        track_batch(model.train(), images, batch_annotations())
    _assert_buffers_equal(model, before)
    images[1] = MAX_ABS_PIXEL  # the bound itself is accepted
    model.train()(images, batch_annotations())


def test_a_forward_with_non_finite_outputs_restores_batchnorm_and_means():
    model = tiny_model(DLDENetWithTrackedMeans, fpn_levels=[3, 4]).train()
    with torch.no_grad():
        model.regression.head.last.bias[0] = float("nan")  # e.g. a weight ruined by a bad step
    before = _buffers(model)
    with pytest.raises(FloatingPointError, match="non-finite box regressions.*restored"):
        model(torch.randn(2, 3, 64, 64), batch_annotations())
    _assert_buffers_equal(model, before)  # the means were tracked inside the forward, then restored


def test_snapshot_buffers_undoes_a_step_the_trainer_refuses():
    model = tiny_model(DLDENetWithTrackedMeans, fpn_levels=[3, 4]).train()
    before = _buffers(model)
    restore = snapshot_buffers(model)
    output = model(torch.randn(2, 3, 64, 64), batch_annotations())
    model.loss(*output, batch_annotations(), assignment=output.assignment)
    assert not torch.equal(model.fpn.stem[1].running_var, before["fpn.stem.1.running_var"])
    restore()  # what the trainer does with a non-finite loss, before raising or skipping
    _assert_buffers_equal(model, before)


def test_training_only_frees_the_chosen_parameters_and_restores_every_flag_after_an_error():
    model = tiny_model(DLDENetWithTrackedMeans, fpn_levels=[3, 4])
    model.fpn.stem[0].weight.requires_grad_(False)  # a flag of the caller's that must come back as it was
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    chosen = {id(p) for p in classifier_parameters(model)}
    assert 0 < len(chosen) < len(flags)
    with pytest.raises(RuntimeError, match="inside"):
        with training_only(model, classifier_parameters(model)) as trainable:
            assert {id(p) for p in trainable} == chosen
            assert {id(p) for p in model.parameters() if p.requires_grad} == chosen
            raise RuntimeError("inside")
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags


def test_the_classification_loss_alone_equals_the_full_losses_classification_term():
    model = tiny_model(DLDENetWithTrackedMeans, fpn_levels=[3, 4]).train()
    output = model(torch.randn(2, 3, 64, 64), batch_annotations())
    full = model.loss(*output, batch_annotations(), assignment=output.assignment)
    anchors, _, classifications = output
    alone = model.loss(anchors, None, classifications, batch_annotations(), assignment=output.assignment)
    assert alone.keys() == {"classification"} and torch.equal(alone["classification"], full["classification"])


def test_the_checks_only_read_valid_inputs():
    torch.manual_seed(3)
    checked = tiny_model(DLDENetWithTrackedMeans, fpn_levels=[3, 4]).train()
    unchecked = copy.deepcopy(checked)
    unchecked.check_inputs = False
    assert checked.check_inputs is True
    images, annotations = torch.randn(2, 3, 64, 64), batch_annotations()
    state = torch.random.get_rng_state()
    outputs = [model(images, annotations) for model in (checked, unchecked)]
    assert torch.equal(state, torch.random.get_rng_state())
    for a, b in zip(*outputs):
        assert torch.equal(a, b)
    _assert_buffers_equal(checked, _buffers(unchecked))
    assert RetinaNet(3, features=SMALL, pretrained=False, check_inputs=False).check_inputs is False


# ------------------------------------------------------------- 3. the sigmoid head: no NaN loss either
def test_retinanet_refuses_a_nan_pixel_in_training():
    model = tiny_model(RetinaNet, fpn_levels=[3, 4]).train()
    before = _buffers(model)
    images = torch.randn(2, 3, 64, 64)
    images[1, 2, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="image 1 of 2"):
        model(images, batch_annotations())
    _assert_buffers_equal(model, before)


# --------------------------------------------- 4. degenerate boxes: dropped with one warning, as the loader
def test_degenerate_boxes_are_dropped_with_one_warning():
    model = tiny_model(RetinaNet, fpn_levels=[3, 4]).train()
    images = torch.randn(2, 3, 64, 64)
    clean = torch.cat([batch_annotations(), torch.full((2, 1, 5), -1.0)], dim=1)
    bad = clean.clone()
    bad[0, 2] = torch.tensor([10.0, 10.0, 10.0, 40.0, 1.0])  # zero width
    bad[1, 2] = torch.tensor([66.0, 5.0, 90.0, 30.0, 0.0])  # right of the 64 px image, touches edge anchors
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        output = model(images, bad)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "dropped 2 degenerate boxes" in messages[0]
    assert "1 of zero width or height" in messages[0] and "1 entirely outside the 64x64 image" in messages[0]
    expected = model.assign(output[0], clean)
    for got, want in zip(output.assignment, expected):
        assert torch.equal(got, want)
    reference = model.loss(*output, clean, assignment=expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        readme_path = model.loss(*output, bad)  # the README's call: the loss matches the anchors itself
    for key in reference:
        assert torch.equal(readme_path[key], reference[key]), key
    assert torch.equal(bad[1, 2], torch.tensor([66.0, 5.0, 90.0, 30.0, 0.0]))  # the caller's tensor is kept


# --------------------------------------------------- 5. checkpoints hold plain data, checked before writing
def test_save_refuses_extra_that_is_not_plain_data(tmp_path):
    model = tiny_model(RetinaNet, fpn_levels=[3])
    with pytest.raises(ValueError, match=r"checkpoint\['note'\] is of type object, not plain data") as info:
        model.save(tmp_path / "m.pt", note=object())
    assert "\n" not in str(info.value) and "m.pt" in str(info.value)
    with pytest.raises(ValueError, match=r"checkpoint\['history'\]\[1\] is of type numpy.ndarray.*torch.from_numpy"):
        model.save(tmp_path / "m.pt", history=[torch.zeros(2), np.zeros(2)])
    assert not list(tmp_path.iterdir())  # nothing written
    path = model.save(tmp_path / "m.pt", note="plain", epochs=[1, 2], extra={"lr": 0.1, "dtype": torch.float32})
    assert torch.load(path, weights_only=True)["note"] == "plain"


# -------------------------------------------------------- 6. unclear errors name the file, key, sizes
def test_a_coco_annotation_path_that_is_a_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"is a folder, not a COCO JSON file"):
        CocoDetection(tmp_path, tmp_path)


def test_a_coco_file_without_categories_is_refused(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(ValueError, match=r"ann.json: 'categories' is empty"):
        CocoDetection(tmp_path, path)


@pytest.mark.parametrize(("levels", "size", "stride"), [([3, 4], 8, 16), ([3, 4, 5, 6, 7], 64, 128)])
def test_images_too_small_for_groupnorm_name_the_size_and_the_minimum(levels, size, stride):
    model = tiny_model(RetinaNet, fpn_levels=levels, group_norm=True).eval()  # 1 channel per group
    with pytest.raises(ValueError, match=rf"one {size}x{size} image is too small for this model: the GroupNorm "
                                         rf".* 1x1 map at stride {stride}.*larger than {stride} px") as info:
        model(torch.randn(1, 3, size, size))
    assert "\n" not in str(info.value) and "when training" not in str(info.value)
    assert len(model(torch.randn(1, 3, stride + 1, stride + 1))) == 1  # the smallest size that works
    assert len(model(torch.randn(2, 3, size, size))) == 2  # or two images


def test_a_checkpoint_with_other_shapes_names_the_key_and_both_shapes(tmp_path):
    model = tiny_model(DLDENetWithTrackedMeans, fpn_levels=[3, 4])
    checkpoint = torch.load(model.save(tmp_path / "m.pt"), weights_only=True)
    checkpoint["model"]["classification.tracker.means"] = torch.zeros(4, 8)
    del checkpoint["model"]["classification.weight"]
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad.pt: the weights do not fit the saved hyperparameters: "
                                         r"classification.tracker.means has shape \(4, 8\) in the checkpoint "
                                         r"but \(3, 8\) in the model; missing: classification.weight") as info:
        RetinaNet.from_checkpoint(tmp_path / "bad.pt")
    assert "\n" not in str(info.value)
