import math

import pytest
import torch
import torch.nn.functional as F
from helpers import SMALL, batch_annotations
from torch.testing import assert_close

from dlde import DirectionalClassification, TrackedMeans, build_detector, load_detector
from dlde.model.compat import SeedDirectionalClassification


def make_head(classes=3, d=4, mode="batch", lr=0.1, init="zeros"):
    """The seed's set-up and spellings (``head.means``, ``head.track(embeddings, anchors, annotations)``):
    zero means until first tracked (closed forms below assume it)."""
    return SeedDirectionalClassification(8, d, 1, 8, classes, {"object": 0.5, "background": 0.4},
                                         means_update=mode, means_lr=lr, means_init=init)


def test_initial_values_and_buffers():
    head = make_head()
    assert head.means.shape == head.embeddings_sums.shape == (3, 4)
    assert_close(head.weight.detach(), torch.full((3,), 7.0))
    assert_close(head.bias.detach(), torch.full((3,), -0.5))
    buffers = dict(head.named_buffers())
    assert any(name.endswith("means") for name in buffers)
    assert all("means" not in name for name, _ in head.named_parameters())
    assert not head.means.requires_grad


def test_encode_unit_vectors_and_zero_vector_without_nan():
    head = make_head()
    features = torch.randn(2, 8, 3, 5)
    embeddings = head.encode(features)
    assert embeddings.shape == (2, 15, 4)
    assert_close(embeddings.norm(dim=-1), torch.ones(2, 15))
    with torch.no_grad():
        head.encoder.last.weight.zero_()
        head.encoder.last.bias.zero_()
    zero = head.encode(features)
    assert torch.isfinite(zero).all() and (zero == 0).all()


def test_classify_closed_form():
    head = make_head(classes=2, d=2)
    head.means = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    with torch.no_grad():
        head.weight.copy_(torch.tensor([7.0, 3.0]))
        head.bias.copy_(torch.tensor([-0.5, 0.2]))
    angle = torch.tensor([0.0, math.pi / 3, math.pi, 1.0])
    embeddings = torch.stack([angle.cos(), angle.sin()], dim=1)  # (4, 2)
    p = head.classify(embeddings)
    for c, (w, b) in enumerate([(7.0, -0.5), (3.0, 0.2)]):
        s = embeddings @ head.means[c]
        expected = torch.sigmoid(w * (s + b)) / torch.sigmoid(torch.tensor(w * (1 + b)))
        assert_close(p[:, c], expected)
    assert_close(p[0, 0], torch.tensor(1.0))  # on the mean: probability 1
    # The seed's documented initial values: p(cos=1) = 1, p(cos=0) ~ 0.03, p(cos=-1) ~ 3e-5.
    fresh = make_head(classes=1, d=2)
    fresh.means = torch.tensor([[1.0, 0.0]])
    p0 = fresh.classify(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))[:, 0]
    assert p0[0].item() == pytest.approx(1.0)
    assert p0[1].item() == pytest.approx(0.0302, abs=5e-4)
    assert p0[2].item() == pytest.approx(2.8e-5, rel=0.05)


def test_classify_stays_in_unit_interval_with_negative_weight_and_zero_mean():
    head = make_head(classes=3, d=3)
    head.means = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # class 2 never tracked
    with torch.no_grad():
        head.weight.copy_(torch.tensor([-7.0, 0.5, 7.0]))
        head.bias.copy_(torch.tensor([-0.5, -3.0, -0.5]))
    embeddings = F.normalize(torch.randn(500, 3), dim=1)
    p = head.classify(embeddings)
    assert torch.isfinite(p).all()
    assert (p >= 0).all() and (p <= 1).all()
    assert (p[:, 2] == 0).all()  # no mean yet: no class evidence, not a constant score
    p.sum().backward()
    assert torch.isfinite(head.weight.grad).all() and torch.isfinite(head.bias.grad).all()


def _track_setup():
    # Four anchors; annotations coincide with some of them so the matching is known.
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0],
                            [40.0, 0.0, 50.0, 10.0], [60.0, 0.0, 70.0, 10.0]])
    pad = [-1.0] * 5
    annotations = torch.tensor([[[0.0, 0.0, 10.0, 10.0, 0.0], [20.0, 0.0, 30.0, 10.0, 1.0]],
                                [[40.0, 0.0, 50.0, 10.0, 0.0], pad]])
    embeddings = F.normalize(torch.randn(2, 4, 5), dim=-1)
    return anchors, annotations, embeddings


def test_batch_tracking_is_one_update_per_batch():
    anchors, annotations, embeddings = _track_setup()
    head = make_head(classes=3, d=5, lr=0.1)
    start = F.normalize(torch.randn(3, 5), dim=1)
    start[2] = 0
    head.means = start
    head.track(embeddings, anchors, annotations)
    # class 0: anchors 0 (image 0) and 2 (image 1); class 1: anchor 1 (image 0); class 2: absent.
    v0 = F.normalize(embeddings[0, 0] + embeddings[1, 2], dim=0)
    v1 = embeddings[0, 1]
    assert_close(head.means[0], F.normalize(0.9 * start[0] + 0.1 * v0, dim=0))
    assert_close(head.means[1], F.normalize(0.9 * start[1] + 0.1 * v1, dim=0))
    assert_close(head.means[2], torch.zeros(5))
    # Two per-image updates (the seed's behaviour) would give a different mean for class 0.
    per_image = F.normalize(0.9 * start[0] + 0.1 * embeddings[0, 0], dim=0)
    per_image = F.normalize(0.9 * per_image + 0.1 * embeddings[1, 2], dim=0)
    assert not torch.allclose(head.means[0], per_image)


def test_batch_tracking_initializes_a_zero_mean_with_the_class_direction():
    anchors, annotations, embeddings = _track_setup()
    head = make_head(classes=3, d=5)
    head.track(embeddings, anchors, annotations)
    assert_close(head.means[1], embeddings[0, 1])


def test_manual_tracking_accumulates_then_updates_and_resets():
    anchors, annotations, embeddings = _track_setup()
    head = make_head(classes=3, d=5, mode="manual")
    previous = F.normalize(torch.randn(3, 5), dim=1)
    head.means = previous
    head.track(embeddings, anchors, annotations)
    head.track(embeddings, anchors, annotations)
    sum0 = 2 * (embeddings[0, 0] + embeddings[1, 2])
    assert_close(head.embeddings_sums[0], sum0)
    assert_close(head.means, previous)  # nothing moves before update_means()
    head.update_means()
    assert_close(head.means[0], F.normalize(sum0, dim=0))
    assert_close(head.means[1], embeddings[0, 1])
    assert_close(head.means[2], previous[2])  # no matched anchors: previous mean kept, no NaN
    assert (head.embeddings_sums == 0).all()
    head.update_means()  # nothing accumulated: nothing changes
    assert torch.isfinite(head.means).all()


def test_tracked_means_closed_form_over_a_sequence():
    tracker = TrackedMeans(1, 2, lr=0.5)
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    tracker.update(e1, torch.tensor([0]))
    tracker.update(e2, torch.tensor([0]))
    # mean = normalize(0.5 * (1, 0) + 0.5 * (0, 1)) = (1, 1) / sqrt(2)
    assert_close(tracker.means[0], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    tracker.update(e2, torch.tensor([0]))
    expected = F.normalize(0.5 * torch.tensor([1.0, 1.0]) / math.sqrt(2) + 0.5 * torch.tensor([0.0, 1.0]), dim=0)
    assert_close(tracker.means[0], expected)


def test_invalid_means_options():
    with pytest.raises(ValueError, match="unsupported means update"):
        make_head(mode="epoch")
    with pytest.raises(ValueError, match="means_lr"):
        make_head(lr=0.0)


def test_training_forward_scores_with_the_means_before_the_batch():
    anchors, annotations, _ = _track_setup()
    head = make_head(classes=3, d=5)
    head.train()
    feature_maps = [torch.randn(2, 8, 1, 4)]  # one level, four locations, one anchor each
    head.means = F.normalize(torch.randn(3, 5), dim=1)
    before = head.means.clone()
    probabilities = head(feature_maps, anchors[None].expand(2, -1, -1), annotations)
    after = head.means.clone()
    assert not torch.allclose(before, after)
    head.means = before
    with torch.no_grad():
        expected = head.classify(head.embed(feature_maps))
    assert_close(probabilities.detach(), expected)


def test_training_forward_needs_anchors_and_annotations():
    head = make_head()
    head.train()
    with pytest.raises(ValueError, match="anchors"):
        head([torch.randn(1, 8, 2, 2)])
    head.eval()
    assert head([torch.randn(1, 8, 2, 2)]).shape == (1, 4, 3)


def test_padding_and_empty_images_change_no_mean():
    anchors, _, embeddings = _track_setup()
    head = make_head(classes=3, d=5)
    start = F.normalize(torch.randn(3, 5), dim=1)
    head.means = start
    empty = torch.full((2, 3, 5), -1.0)
    head.track(embeddings, anchors, empty)
    assert_close(head.means, start)
    head.track(embeddings, anchors, torch.zeros(2, 0, 5))
    assert_close(head.means, start)


def test_count_schedule_steps_by_max_lr_and_inverse_count():
    """lr 0.25: class 0 (in every batch) steps 1, 1/2, 1/3, 1/4, then 1/4 (max(0.25, 1/5), max(0.25, 1/6));
    class 1 (batches 2 and 5 only) steps 1, then 1/2; class 2 (never tracked) keeps its start."""
    generator = torch.Generator().manual_seed(0)
    tracker = TrackedMeans(3, 4, lr=0.25, lr_schedule="count")
    tracker.initialize("orthogonal", generator=generator)
    start = tracker.means.clone()
    batches = [F.normalize(torch.randn(2, 4, generator=generator, dtype=torch.float64), dim=1) for _ in range(6)]
    expected = start.double().clone()
    steps = {0: [1, 1 / 2, 1 / 3, 1 / 4, 1 / 4, 1 / 4], 1: {1: 1.0, 4: 1 / 2}}
    for n, embeddings in enumerate(batches):
        labels = torch.tensor([0, 1]) if n in (1, 4) else torch.tensor([0, 0])
        tracker.update(embeddings.float(), labels)
        direction = F.normalize(embeddings[labels == 0].sum(0), dim=0)
        expected[0] = F.normalize((1 - steps[0][n]) * expected[0] + steps[0][n] * direction, dim=0)
        if n in steps[1]:
            expected[1] = F.normalize((1 - steps[1][n]) * expected[1] + steps[1][n] * embeddings[1], dim=0)
        if n == 0:
            assert_close(tracker.means[0], direction.float())  # a running average: the start is replaced
    assert_close(tracker.means, expected.float())
    assert_close(tracker.means[2], start[2])
    assert tracker.batch_counts.tolist() == [6, 2, 0]


def test_count_schedule_exists_only_when_chosen_and_uses_the_reduced_counts():
    assert set(TrackedMeans(3, 4).state_dict()) == {"means", "embeddings_sums"}  # checkpoints keep their keys
    assert TrackedMeans(3, 4).batch_counts is None
    tracker = TrackedMeans(3, 4, lr=0.1, lr_schedule="count")
    assert set(tracker.state_dict()) == {"means", "embeddings_sums", "batch_counts"}
    other = F.normalize(torch.randn(4), dim=0)

    def reducer(sums, counts):  # another process saw one anchor of class 2
        sums, counts = sums.clone(), counts.clone()
        sums[2] += other
        counts[2] += 1
        return sums, counts

    tracker.reducer = reducer
    tracker.initialize("random")
    tracker.update(F.normalize(torch.randn(1, 4), dim=1), torch.tensor([0]))
    assert tracker.batch_counts.tolist() == [1, 0, 1]
    assert_close(tracker.means[2], other)  # every process takes the same first step
    tracker.grow(2)
    assert tracker.batch_counts.tolist() == [1, 0, 1, 0, 0]
    tracker.set_mean(4, F.normalize(torch.randn(3, 4), dim=1))
    assert tracker.batch_counts[4] == 1  # an imprinted mean counts as one tracked batch
    tracker.initialize("random")
    assert tracker.batch_counts.tolist() == [0] * 5
    with pytest.raises(ValueError, match="unknown means lr schedule"):
        TrackedMeans(3, 4, lr_schedule="adaptive")
    with pytest.raises(ValueError, match="'count' sets the step of the 'batch' update"):
        DirectionalClassification(8, 4, 1, 8, 3, means_update="manual", means_lr_schedule="count")


def test_count_schedule_round_trips_in_a_checkpoint(tmp_path):
    model = build_detector("dlde", 3, head_options={"embedding_size": 6, "means_lr_schedule": "count"},
                           features=SMALL, pretrained=False, head_convs=1, fpn_levels=[3, 4]).train()
    model(torch.randn(2, 3, 64, 64), batch_annotations())
    counts = model.tracked_means.batch_counts.clone()
    assert counts.tolist() == [1, 1, 1]
    restored = load_detector(model.save(tmp_path / "m.pt"))
    assert restored.classification.options()["means_lr_schedule"] == "count"
    assert torch.equal(restored.tracked_means.batch_counts, counts)
    assert_close(restored.tracked_means.means, model.tracked_means.means)
