"""The hand-written autograd nodes of the classification path against the plain expressions they replace."""
import pytest
import torch
import torch.nn.functional as F

from dlde.model import losses
from dlde.model.directional import MIN_WEIGHT, CosineSigmoidRatio, DirectionalClassification
from dlde.model.losses import SparseFocalLoss, focal_loss, focal_loss_sum, row_tiles


@pytest.fixture(params=[None, 7], ids=["one-tile", "tiles-of-7-elements"])
def tiles(request, monkeypatch):
    """Run each test with the default tile and with tiles of a single row (the loop over tiles)."""
    if request.param is not None:
        monkeypatch.setattr(losses, "TILE_ELEMENTS", request.param)
    return request.param


def ratio_inputs(rows=11, dim=5, classes=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(rows, dim, generator=g, dtype=dtype), dim=1)
    weight = torch.rand(classes, generator=g, dtype=dtype) * 6 + MIN_WEIGHT
    bias = torch.rand(classes, generator=g, dtype=dtype) * 2 - 1
    directions = F.normalize(torch.randn(classes, dim, generator=g, dtype=dtype), dim=1) * weight[:, None]
    return embeddings, directions, weight * bias, torch.sigmoid(weight * (1 + bias))


def test_row_tiles_cover_every_row_once():
    assert row_tiles(10, 3, elements=7) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8), slice(8, 10)]
    assert row_tiles(10, 100, elements=7) == [slice(i, i + 1) for i in range(10)]  # at least one row
    assert row_tiles(0, 3) == []
    assert row_tiles(5, 3) == [slice(0, 5)]


def test_cosine_sigmoid_ratio_is_the_ratio_of_sigmoids(tiles):
    embeddings, directions, shift, normalizer = ratio_inputs()
    p = CosineSigmoidRatio.apply(embeddings, directions, shift, normalizer)
    expected = torch.sigmoid(embeddings @ directions.t() + shift) / normalizer
    torch.testing.assert_close(p, expected, rtol=1e-12, atol=1e-14)
    assert p.max() <= 1


def test_cosine_sigmoid_ratio_gradcheck(tiles):
    inputs = [t.requires_grad_() for t in ratio_inputs()]
    assert torch.autograd.gradcheck(CosineSigmoidRatio.apply, inputs)


def test_cosine_sigmoid_ratio_clamps_rounding_above_one():
    # An embedding on the mean has cosine 1 (up to rounding): p is 1, never above.
    head = DirectionalClassification(8, 16, 1, 8, 3)
    head.tracker.initialize("orthogonal")
    p = head.classify(head.class_directions())
    assert p.max() <= 1
    torch.testing.assert_close(p.diagonal(), torch.ones(3))


def focal_inputs(rows=9, classes=4, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(rows, classes, generator=g, dtype=dtype) * 0.98 + 0.01
    valid = torch.rand(rows, generator=g) > 0.3
    valid[[0, 3, 5]] = True
    labels = torch.tensor([2, 0, 3])
    positives = torch.tensor([0, 3, 5]) * classes + labels
    targets = torch.zeros(rows, classes, dtype=dtype)
    targets.view(-1)[positives] = 1
    return p, valid, positives, targets


def dense_focal_loss(p, targets, alpha=0.25, gamma=2.0, eps=1e-6):
    """:func:`dlde.model.losses.focal_loss` in the input's precision (it computes in float32)."""
    q = eps + (1 - 2 * eps) * p
    return torch.where(targets == 1, alpha * (1 - q) ** gamma * -torch.log(q),
                       (1 - alpha) * q ** gamma * -torch.log1p(-q))


def test_dense_reference_is_focal_loss():
    p, _, _, targets = focal_inputs(dtype=torch.float32)
    torch.testing.assert_close(dense_focal_loss(p, targets), focal_loss(p, targets))


@pytest.mark.parametrize("gamma", [2.0, 1.5, 0.0])
def test_focal_loss_sum_is_the_dense_focal_loss_over_valid_rows(tiles, gamma):
    p, valid, positives, targets = focal_inputs()
    expected = (dense_focal_loss(p, targets, gamma=gamma).sum(-1) * valid).sum()
    torch.testing.assert_close(focal_loss_sum(p, valid, positives, gamma=gamma), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gamma", [2.0, 1.5])
def test_focal_loss_sum_gradcheck(tiles, gamma):
    p, valid, positives, _ = focal_inputs()
    p.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: SparseFocalLoss.apply(x, valid.double(), positives, 0.25, gamma, 1e-6), [p])


def test_focal_loss_sum_gradient_equals_autograd_of_the_dense_loss(tiles):
    p, valid, positives, targets = focal_inputs(rows=40, classes=6, dtype=torch.float32)
    p.requires_grad_()
    (grad,) = torch.autograd.grad(focal_loss_sum(p, valid, positives), p)
    (expected,) = torch.autograd.grad((focal_loss(p, targets).sum(-1) * valid).sum(), p)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    assert torch.all(grad[~valid] == 0)


def test_focal_loss_sum_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"probabilities \(N, C\) and valid \(N,\)"):
        focal_loss_sum(torch.rand(4, 3), torch.ones(5, dtype=torch.bool), torch.tensor([0]))


def test_head_classify_gradients_match_the_log_space_expression(tiles):
    """The fused classify equals the original's expression exp(logsigmoid(z) - logsigmoid(|w| (1 + b)))
    in value and in the gradients of the embeddings, w and b."""
    torch.manual_seed(0)
    head = DirectionalClassification(8, 6, 1, 8, 5).double()
    head.tracker.initialize("random")
    with torch.no_grad():
        head.weight.copy_(torch.tensor([7.0, -3.0, 0.05, 2.0, 5.0]))  # |w|, and the MIN_WEIGHT bound
        head.bias.copy_(torch.tensor([-0.5, 0.3, 0.0, -1.5, 0.9]))   # and the [-1, 1] bound
    embeddings = F.normalize(torch.randn(2, 13, 6, dtype=torch.float64), dim=-1).requires_grad_()

    def reference(e):
        w = head.weight.abs().clamp(min=MIN_WEIGHT)
        b = head.bias.clamp(-1.0, 1.0)
        z = w * (e @ F.normalize(head.tracker.means, dim=1).t() + b)
        return (F.logsigmoid(z) - F.logsigmoid(w * (1 + b))).exp()

    weights = torch.rand(2, 13, 5, dtype=torch.float64)
    fused = head._classify(embeddings)
    torch.testing.assert_close(fused, reference(embeddings), rtol=1e-12, atol=1e-14)
    grads = torch.autograd.grad((fused * weights).sum(), [embeddings, head.weight, head.bias])
    expected = torch.autograd.grad((reference(embeddings) * weights).sum(), [embeddings, head.weight, head.bias])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
