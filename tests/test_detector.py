import pytest
import torch
from helpers import batch_annotations, tiny_model
from torch.testing import assert_close

from dlde import DLDENetWithTrackedMeans, RetinaNet
from dlde.model.backbone import pretrained_weights_path
from dlde.model.losses import detection_loss

MODELS = [DLDENetWithTrackedMeans, RetinaNet]


@pytest.mark.parametrize("cls", MODELS)
def test_train_and_evaluate_loss_outputs(cls):
    model = tiny_model(cls).train()
    images = torch.randn(2, 3, 64, 96)
    anchors, regressions, classifications = model(images, batch_annotations())
    count = 9 * sum(-(-64 // 2 ** l) * -(-96 // 2 ** l) for l in range(3, 8))
    assert anchors.shape == regressions.shape == (2, count, 4)
    assert classifications.shape == (2, count, 3)
    model.eval()
    model.evaluate_loss = True
    outputs = model(images, batch_annotations())
    assert len(outputs) == 3 and not any(t.requires_grad for t in outputs)


@pytest.mark.parametrize("cls", MODELS)
def test_every_parameter_gets_a_gradient_and_nothing_is_nan(cls):
    model = tiny_model(cls, group_norm=True).train()
    images = torch.randn(2, 3, 64, 64)
    annotations = batch_annotations()
    if cls is DLDENetWithTrackedMeans:
        model(images, annotations, initializing=True)  # give every class a mean first
    losses = model.loss(*model(images, annotations), annotations)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    if cls is DLDENetWithTrackedMeans:
        head = model.classification
        assert head.weight.grad.abs().sum() > 0 and head.bias.grad.abs().sum() > 0
        assert head.means.grad is None and not head.means.requires_grad


@pytest.mark.parametrize("levels", [[3], [4, 5], [3, 6], [5, 6, 7], [7]])
def test_any_subset_of_fpn_levels(levels):
    model = tiny_model(DLDENetWithTrackedMeans, fpn_levels=levels).train()
    images = torch.randn(1, 3, 70, 50)
    anchors, regressions, classifications = model(images, batch_annotations()[:1])
    assert anchors.shape[1] == sum(model.anchors.level_counts(70, 50)) == classifications.shape[1]
    assert model.anchors.strides == [2 ** l for l in levels]
    losses = model.loss(anchors, regressions, classifications, batch_annotations()[:1])
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_invalid_levels_and_arguments():
    with pytest.raises(ValueError, match="fpn_levels"):
        tiny_model(RetinaNet, fpn_levels=[2, 3])
    with pytest.raises(ValueError, match="features has unknown keys"):
        tiny_model(RetinaNet, features={"pyramid": 16, "clasification": 16})
    with pytest.raises(ValueError, match="resnet depth"):
        tiny_model(RetinaNet, resnet=20)


def test_training_needs_annotations_and_rejects_bad_ones():
    model = tiny_model(DLDENetWithTrackedMeans).train()
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="annotations"):
        model(images)
    bad_label = batch_annotations()
    bad_label[1, 0, 4] = 7
    with pytest.raises(ValueError, match="labels must be integers"):
        model(images, bad_label)
    flipped = batch_annotations()
    flipped[0, 0, 2] = 0.0
    with pytest.raises(ValueError, match="x2 >= x1"):
        model(images, flipped)
    with pytest.raises(ValueError, match=r"\(B, M, 5\)"):
        model(images, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="images must be"):
        model(torch.randn(3, 32, 32), batch_annotations())


@pytest.mark.parametrize("train_mode", [True, False])
def test_initializing_tracks_without_classifying(train_mode):
    model = tiny_model(DLDENetWithTrackedMeans).train(train_mode)
    images = torch.randn(2, 3, 64, 64)
    assert model(images, batch_annotations(), initializing=True) is None
    means = model.classification.means
    assert_close(means.norm(dim=1), torch.ones(3))  # all three labels were present
    assert not means.requires_grad


def test_images_without_objects_give_zero_box_loss():
    model = tiny_model(RetinaNet).train()
    empty = torch.full((2, 1, 5), -1.0)
    losses = model.loss(*model(torch.randn(2, 3, 32, 32), empty), empty)
    assert losses["bbox_regression"].item() == 0.0
    assert torch.isfinite(losses["classification"])
    none = torch.zeros(2, 0, 5)
    losses = model.loss(*model(torch.randn(2, 3, 32, 32), none), none)
    assert losses["bbox_regression"].item() == 0.0


def test_focal_loss_is_normalized_by_positives():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [40.0, 40.0, 50.0, 50.0]])
    one = torch.tensor([[[0.0, 0.0, 10.0, 10.0, 0.0]]])
    two = torch.tensor([[[0.0, 0.0, 10.0, 10.0, 0.0], [20.0, 20.0, 30.0, 30.0, 0.0]]])
    p = torch.full((1, 3, 1), 0.5)
    deltas = torch.zeros(1, 3, 4)
    loss_one = detection_loss(anchors, deltas, p, one)["classification"]
    loss_two = detection_loss(anchors, deltas, p, two)["classification"]
    # each anchor contributes 0.25 * 0.5^2 * ln 2 (positive) or 0.75 * 0.5^2 * ln 2 (negative)
    unit = 0.25 * torch.log(torch.tensor(2.0))
    assert_close(loss_one, (0.25 * unit + 2 * 0.75 * unit) / 1)
    assert_close(loss_two, (2 * 0.25 * unit + 0.75 * unit) / 2)


def _postprocess_inputs(scores_per_anchor, classes=2):
    model = tiny_model(RetinaNet, classes=classes, fpn_levels=[3],
                       anchors={"sizes": [8], "scales": [1.0], "ratios": [1.0]})
    model.eval()
    images = torch.zeros(1, 3, 16, 16)  # 2 x 2 grid, one anchor each
    anchors = model.anchors(images)
    regressions = torch.zeros(1, 4, 4)
    classifications = torch.tensor(scores_per_anchor, dtype=torch.float32)[None]
    return model, images, anchors, regressions, classifications


def test_single_surviving_box_is_kept():
    model, *inputs = _postprocess_inputs([[0.9, 0.0], [0.01, 0.0], [0.0, 0.02], [0.0, 0.0]])
    (boxes, probabilities), = model.postprocess(*inputs)
    assert boxes.shape == (1, 4) and probabilities.shape == (1, 2)
    assert_close(boxes[0], torch.tensor([0.0, 0.0, 8.0, 8.0]))
    assert_close(probabilities[0], torch.tensor([0.9, 0.0]))


def test_nms_is_class_aware_and_detections_are_capped():
    model, images, anchors, regressions, classifications = _postprocess_inputs(
        [[0.9, 0.0], [0.0, 0.8], [0.7, 0.0], [0.6, 0.0]])
    anchors = anchors.clone()
    anchors[0, 1] = torch.tensor([0.0, 0.0, 8.0, 8.0])   # same box as anchor 0, other class: kept
    anchors[0, 2] = torch.tensor([0.0, 0.0, 8.0, 7.0])   # overlaps anchor 0, same class: suppressed
    (boxes, probabilities), = model.postprocess(images, anchors, regressions, classifications)
    assert probabilities.max(dim=1).values.tolist() == pytest.approx([0.9, 0.8, 0.6])
    model.max_detections = 2
    (boxes, probabilities), = model.postprocess(images, anchors, regressions, classifications)
    assert len(boxes) == 2


def test_eval_returns_one_result_per_image_with_clipped_boxes():
    model = tiny_model(DLDENetWithTrackedMeans)
    model(torch.randn(2, 3, 64, 64), batch_annotations(), initializing=True)
    model.eval()
    model.score_threshold = 0.0
    outputs = model(torch.randn(2, 3, 64, 80))
    assert len(outputs) == 2
    for boxes, probabilities in outputs:
        assert boxes.shape[1] == 4 and probabilities.shape == (boxes.shape[0], 3)
        assert 0 < len(boxes) <= model.max_detections
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 64).all()
    predictions = model.predict(torch.randn(1, 3, 64, 80))
    assert set(predictions[0]) == {"boxes", "scores", "labels"}
    assert not model.training


def test_checkpoint_round_trip_restores_everything(tmp_path):
    model = tiny_model(DLDENetWithTrackedMeans, fpn_levels=[3, 4], embedding_size=5, means_update="manual",
                       means_lr=0.3, assignation_thresholds={"object": 0.6, "background": 0.3})
    model.train()
    model(torch.randn(2, 3, 64, 64), batch_annotations(), initializing=True)
    model.tracked_means.update_means()
    path = model.save(tmp_path / "ckpt" / "model.pt", epoch=3)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary left behind
    raw = torch.load(path, weights_only=True)
    head = raw["hyperparameters"]["model"]["head"]
    assert head["name"] == "dlde" and raw["epoch"] == 3
    assert head["options"]["means_update"] == "manual" and head["options"]["means_lr"] == 0.3
    restored = DLDENetWithTrackedMeans.from_checkpoint(str(path))
    assert restored.hyperparameters == model.hyperparameters
    assert restored.classification.means_update == "manual" and restored.classification.means_lr == 0.3
    assert restored.fpn_levels == [3, 4] and restored.embedding_size == 5
    assert restored.assignation_thresholds == {"object": 0.6, "background": 0.3}
    assert_close(restored.classification.means, model.classification.means)
    assert restored.classification.means.norm(dim=1).gt(0).all()
    images = torch.randn(1, 3, 64, 64)
    model.eval(), restored.eval()
    model.evaluate_loss = restored.evaluate_loss = True
    assert_close(model(images)[2], restored(images)[2])
    tiny_model(RetinaNet).save(tmp_path / "r.pt")
    from_dict = RetinaNet.from_checkpoint(torch.load(tmp_path / "r.pt", weights_only=True))
    assert isinstance(from_dict, RetinaNet)


def test_pretrained_weights_only_from_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pretrained=False"):
        tiny_model(RetinaNet, pretrained=True)
    import torchvision
    reference = torchvision.models.resnet18(weights=None).state_dict()
    path = pretrained_weights_path(18)
    path.parent.mkdir(parents=True)
    torch.save(reference, path)
    model = tiny_model(RetinaNet, pretrained=True)
    assert_close(model.fpn.stem[0].weight, reference["conv1.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("cls", MODELS)
def test_tiny_model_overfits_two_images(cls):
    torch.manual_seed(0)
    images = torch.zeros(2, 3, 64, 64)
    images[0, :, 8:32, 8:32] = 2.0        # a bright square: class 0
    images[1, 0, 30:58, 20:44] = 2.0      # a red rectangle: class 1
    images[1, 1:, 30:58, 20:44] = -2.0
    annotations = torch.tensor([[[8.0, 8.0, 32.0, 32.0, 0.0]], [[20.0, 30.0, 44.0, 58.0, 1.0]]])
    extra = {"embedding_size": 16} if cls is DLDENetWithTrackedMeans else {}
    model = tiny_model(cls, classes=2, fpn_levels=[3, 4], group_norm=True,
                       anchors={"sizes": [24, 48], "scales": [1.0], "ratios": [1.0]}, **extra)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(200):
        losses = model.loss(*model(images, annotations), annotations)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert sum(losses.values()).item() < 0.5
    model.eval()
    from torchvision.ops import box_iou
    for prediction, target in zip(model.predict(images), annotations):
        assert prediction["labels"][0] == target[0, 4]
        assert prediction["scores"][0] > 0.5
        assert box_iou(prediction["boxes"][:1], target[:, :4])[0, 0] > 0.7


def test_focal_loss_keeps_a_gradient_for_saturated_probabilities():
    from dlde.model.losses import focal_loss
    p = torch.tensor([1.0, 0.0, 1.0], requires_grad=True)
    targets = torch.tensor([0.0, 1.0, 1.0])
    loss = focal_loss(p, targets)
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    assert p.grad[0] > 0 and p.grad[1] < 0  # a wrong certain answer is still pushed back
    assert loss[2] < 1e-9


def test_sparse_focal_loss_matches_the_dense_definition():
    from dlde.model.anchors import assign_batch
    from dlde.model.losses import focal_loss
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [40.0, 40.0, 50.0, 50.0],
                            [0.0, 0.0, 10.0, 14.0]])
    annotations = torch.tensor([[[0.0, 0.0, 10.0, 10.0, 2.0], [20.0, 20.0, 30.0, 31.0, 0.0]],
                                [[40.0, 40.0, 49.0, 50.0, 1.0], [-1.0, -1.0, -1.0, -1.0, -1.0]]])
    p = torch.rand(2, 4, 3)
    loss = detection_loss(anchors, torch.zeros(2, 4, 4), p, annotations)["classification"]
    assignment = assign_batch(anchors, annotations)
    targets = torch.nn.functional.one_hot(assignment.assigned_annotations[..., 4].long().clamp(min=0), 3).float()
    targets = targets * assignment.objects_mask[..., None]
    valid = assignment.objects_mask | assignment.background_mask
    dense = (focal_loss(p, targets).sum(-1) * valid).sum() / assignment.objects_mask.sum()
    assert_close(loss, dense)
