"""classifier_init='prior': cosine heads whose start does not depend on the vocabulary (issue 16, item 3)."""
import math
from functools import lru_cache

import pytest
import torch
from torch.testing import assert_close

from dlde import CosinePrototypeClassification, DirectionalClassification, build_detector, load_detector
from dlde.model.heads import SigmoidClassification, prior_logit
from dlde.model.losses import focal_loss
from dlde.model.priors import cosine_quadrature, excess_losses
from dlde.model.registry import head_factory

FEATURES = {"pyramid": 32, "regression": 32, "classification": 32}
PRIOR = SigmoidClassification.Options.prior
#: Where the issue's bound of 1.5x is beyond the head's form: DLDENet's p = 1 at cosine 1 with b >= -1
#: leaves no start below 1.42x at d = 32 (1.49 at PRIOR_BIAS, see DirectionalClassification.prior_start);
#: over head seeds its loss on the batch below measured 1.41-1.59x. Everywhere else: 1.5x.
BOUNDS = {("dlde", 32): 1.6}


def batch(classes, images=8, size=64, seed=0):
    """``images`` random images with 1-3 boxes of 12-40 px each and labels in ``[0, classes)``."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(images, 3, size, size, generator=generator)
    annotations = torch.full((images, 3, 5), -1.0)
    for i in range(images):
        k = 1 + i % 3
        wh = torch.randint(12, 40, (k, 2), generator=generator).float()
        xy = (torch.rand(k, 2, generator=generator) * (size - wh)).floor()
        annotations[i, :k, :4] = torch.cat([xy, xy + wh], dim=1)
        annotations[i, :k, 4] = torch.randint(0, classes, (k,), generator=generator).float()
    return pixels, annotations


def detector(name, classes, d=None, **options):
    """A small detector; the backbone (built first after the seed) is the same for every head."""
    torch.manual_seed(0)
    head_options = {} if name == "retinanet" else {"embedding_size": d, **options}
    return build_detector(name, classes, head_options=head_options, features=FEATURES, pretrained=False,
                          head_convs=2, fpn_levels=[3, 4])


@lru_cache(maxsize=None)
def sigmoid_detector(classes):
    """The sigmoid detector of ``classes`` classes and its head (other heads are swapped in)."""
    model = detector("retinanet", classes).train()
    return model, model.classification


@lru_cache(maxsize=None)
def initial_loss(name, classes, d=None, classifier_init=None):
    """The classification loss of a fresh head on the batch of ``classes``, every head on the sigmoid
    detector's backbone (training mode: the means are tracked after the batch is scored)."""
    model, head = sigmoid_detector(classes)
    if name != "retinanet":
        options = {"embedding_size": d, **({} if classifier_init is None else {"classifier_init": classifier_init})}
        torch.manual_seed(1)
        head = head_factory(name, **options)(
            model.features["pyramid"], model.anchors.num_anchors, model.features["classification"], classes,
            convs=model.head_convs, group_norm=model.group_norm, assignation_thresholds=model.assignation_thresholds,
            allow_low_quality_matches=model.allow_low_quality_matches).train()
    model.classification = head
    images, annotations = batch(classes)
    with torch.no_grad():
        output = model(images, annotations)
        return float(model.loss(*output, annotations, assignment=output.assignment)["classification"])


@pytest.mark.parametrize("d", [2, 3, 32, 128])
def test_the_quadrature_has_the_moments_of_a_random_cosine(d):
    s, weights = cosine_quadrature(d)
    assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert abs(float((weights * s).sum())) < 1e-12
    assert float((weights * s**2).sum()) == pytest.approx(1 / d, rel=1e-6)
    assert float((weights * s**4).sum()) == pytest.approx(3 / (d * (d + 2)), rel=1e-6)


@pytest.mark.parametrize("d", [32, 128])
def test_prior_starts_balance_the_expected_losses_of_random_pairs(d):
    s, weights = cosine_quadrature(d)
    w, b = DirectionalClassification.prior_start(d)
    p = torch.sigmoid(w * (s + b)) / torch.sigmoid(s.new_tensor(w * (1 + b)))
    positive, background = excess_losses(p, weights, PRIOR)
    assert float(positive) == pytest.approx(float(background), rel=1e-4)
    assert float(positive) == pytest.approx({32: 1.49, 128: 1.08}[d], abs=0.01)  # the docstring's values
    scale, bias = CosinePrototypeClassification.prior_start(d)
    assert scale == pytest.approx(math.sqrt(d))
    positive, background = excess_losses(torch.sigmoid(scale * s + bias), weights, PRIOR)
    assert float(positive) == pytest.approx(float(background), rel=1e-4) and 1.2 < float(positive) < 1.35
    # The quadrature against random unit vectors (Monte Carlo): the first coordinate of a normalized
    # Gaussian vector, z / sqrt(z² + χ²(d - 1)).
    torch.manual_seed(0)
    z = torch.randn(1_000_000, dtype=torch.float64)
    cosines = z / (z**2 + 2 * torch.distributions.Gamma((d - 1) / 2, 1.0).sample((z.numel(),)).double()).sqrt()
    p = torch.sigmoid(scale * cosines + bias)
    sampled = focal_loss(p, torch.ones_like(p)).double().mean() / focal_loss(torch.tensor(PRIOR), torch.tensor(1.0))
    assert float(sampled) == pytest.approx(float(positive), rel=0.01)


@pytest.mark.parametrize("d", [32, 128])
@pytest.mark.parametrize("classes", [10, 80, 1203])
@pytest.mark.parametrize("name", ["dlde", "prototypes"])
def test_the_initial_loss_of_a_prior_start_is_near_the_sigmoid_heads(name, classes, d):
    sigmoid = initial_loss("retinanet", classes)
    assert sigmoid == pytest.approx(focal_loss(torch.tensor(PRIOR), torch.tensor(1.0)).item(), rel=0.1)
    assert initial_loss(name, classes, d, "prior") <= BOUNDS.get((name, d), 1.5) * sigmoid


def test_the_fixed_start_is_the_original_and_swamps_large_vocabularies():
    for name in ("dlde", "prototypes"):
        assert initial_loss(name, 1203, 32) > 50 * initial_loss("retinanet", 1203)  # issue 16's first table
    head = detector("dlde", 3, 8).classification
    assert (head.classifier_init, head.start_weight, head.start_bias) == ("fixed", 7.0, -0.5)
    assert_close(head.weight.detach(), torch.full((3,), 7.0))
    assert_close(head.bias.detach(), torch.full((3,), -0.5))
    prototypes = detector("prototypes", 3, 8).classification
    assert prototypes.options()["cosine_scale"] == pytest.approx(20.0)
    assert_close(prototypes.bias.detach(), torch.full((3,), prior_logit(PRIOR)))


def test_a_prior_start_round_trips_grows_and_fails_loudly(tmp_path):
    for name in ("dlde", "prototypes"):
        model = detector(name, 4, 16, classifier_init="prior")
        head = model.classification
        if name == "dlde":
            w, b = DirectionalClassification.prior_start(16)
            assert_close(head.weight.detach(), torch.full((4,), w))
            assert_close(head.bias.detach(), torch.full((4,), b))
        else:
            scale, bias = CosinePrototypeClassification.prior_start(16)
            assert float(head.scale) == pytest.approx(scale)
            assert_close(head.bias.detach(), torch.full((4,), bias))
        restored = load_detector(model.save(tmp_path / f"{name}.pt"))
        assert restored.classification.options() == head.options()
        assert restored.classification.options()["classifier_init"] == "prior"
        for key, value in model.state_dict().items():
            assert torch.equal(value, restored.state_dict()[key]), key
    prototypes = detector("prototypes", 2, 16, classifier_init="prior").classification
    prototypes.grow(2)
    assert_close(prototypes.bias.detach()[2:], torch.full((2,), prototypes.start_bias))
    directional = DirectionalClassification(8, 16, 1, 8, 2, means_init="zeros", classifier_init="prior")
    directional.grow(1)  # no class has a mean: the new one starts as the others did
    assert directional.weight[2].item() == pytest.approx(directional.start_weight)
    with pytest.raises(ValueError, match="leave init_weight and init_bias"):
        DirectionalClassification(8, 16, 1, 8, 2, classifier_init="prior", init_weight=5.0)
    with pytest.raises(ValueError, match="unknown classifier_init"):
        detector("prototypes", 2, 16, classifier_init="vocabulary")
