"""The backbone injected like the head (one file and one registration), the seed's spellings in
dlde.model.compat, and the root's public API."""
import inspect

import pytest
import torch
from helpers import SMALL, batch_annotations
from torch import nn
from torch.testing import assert_close

import dlde
import dlde.train
from dlde import DirectionalClassification, DLDENetWithTrackedMeans, ResNetFPN, RetinaNet, build_detector, load_detector
from dlde.model import registry
from dlde.model.compat import SeedDirectionalClassification
from dlde.model.registry import backbone_factory

SETTINGS = dict(features=SMALL, pretrained=False, head_convs=1, fpn_levels=[3, 4])


class Strided(nn.Module):
    """A throwaway backbone: one stride-2 convolution per octave, a 1x1 projection per pyramid level."""

    name = "strided"

    def __init__(self, levels, channels, *, width=8):
        super().__init__()
        self.levels, self.channels, self.width = list(levels), channels, width
        self.down = nn.ModuleList(nn.Conv2d(3 if octave == 0 else width, width, 3, stride=2, padding=1)
                                  for octave in range(max(levels)))
        self.out = nn.ModuleDict({str(level): nn.Conv2d(width, channels, 1) for level in levels})

    def options(self):
        return {"width": self.width}

    def forward(self, images):
        maps, x = [], images
        for level, down in enumerate(self.down, start=1):
            x = torch.relu(down(x))  # (B, width, ceil(H / 2**level), ceil(W / 2**level))
            if level in self.levels:
                maps.append(self.out[str(level)](x))
        return maps


def _weights(build):
    torch.manual_seed(0)
    model = build()
    return model.state_dict(), torch.random.get_rng_state()


def test_the_default_backbone_draws_the_same_weights_however_it_is_given():
    default, after = _weights(lambda: RetinaNet(3, **SETTINGS))
    for build in (lambda: RetinaNet(3, backbone=ResNetFPN(18, [3, 4], SMALL["pyramid"]), **SETTINGS),
                  lambda: RetinaNet(3, backbone=lambda levels, channels: ResNetFPN(18, levels, channels), **SETTINGS)):
        state, rng = _weights(build)
        assert state.keys() == default.keys()
        assert all(torch.equal(state[key], default[key]) for key in default)
        assert torch.equal(rng, after)  # and nothing drawn after them moved
    assert all(key.startswith(("fpn.", "regression.", "classification.")) for key in default)
    assert "backbone" not in RetinaNet(3, **SETTINGS).constructor_arguments()  # checkpoints as before


def test_a_registered_backbone_trains_one_step_and_loads_back_by_name(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.BACKBONES, "strided", Strided)  # the one registration, nothing else
    torch.manual_seed(0)
    model = build_detector("dlde", 3, head_options={"embedding_size": 6}, backbone=backbone_factory("strided"),
                           **SETTINGS).train()
    assert isinstance(model.fpn, Strided) and model.fpn.width == 8
    images, annotations = torch.randn(2, 3, 64, 64), batch_annotations()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    start = model.fpn.down[0].weight.detach().clone()
    output = model(images, annotations)
    losses = model.loss(*output, annotations, assignment=output.assignment)
    sum(losses.values()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    optimizer.step()
    assert not torch.equal(model.fpn.down[0].weight, start)
    assert model.constructor_arguments()["backbone"] == {"name": "strided", "options": {"width": 8}}

    restored = load_detector(model.save(tmp_path / "strided.pt"))
    assert isinstance(restored.fpn, Strided) and restored.fpn.options() == {"width": 8}
    assert restored.constructor_arguments() == model.constructor_arguments()
    model.eval(), restored.eval()
    model.evaluate_loss = restored.evaluate_loss = True
    with torch.no_grad():
        for ours, theirs in zip(model(images), restored(images)):
            assert_close(ours, theirs, rtol=0, atol=0)


def test_a_backbone_that_does_not_fit_the_pyramid_is_refused():
    with pytest.raises(ValueError, match=r"levels \[3, 4\] \(fpn_levels\) with 32 channels"):
        RetinaNet(3, backbone=Strided([3, 4], 16), **SETTINGS)
    with pytest.raises(ValueError, match=r"levels \[3, 4\]"):
        RetinaNet(3, backbone=Strided([3], 32), **SETTINGS)
    with pytest.raises(TypeError, match="nn.Module"):
        RetinaNet(3, backbone=lambda levels, channels: None, **SETTINGS)
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        backbone_factory("nope")


def test_an_unregistered_backbone_checkpoint_says_how_to_load_it(tmp_path):
    path = RetinaNet(3, backbone=Strided([3, 4], 32), **SETTINGS).save(tmp_path / "mine.pt")
    with pytest.raises(ValueError, match=r"\('strided'\).*register it in dlde.model.registry.BACKBONES"):
        load_detector(path)


def test_the_batchnorm_check_asks_the_backbone_for_its_coarsest_stride():
    assert ResNetFPN(18, [3, 4], 8).batchnorm_stride == 16  # the last stage built is C4
    assert ResNetFPN(18, [3, 7], 8).batchnorm_stride == 32
    model = RetinaNet(3, **SETTINGS).train()
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 3, 16, 16), batch_annotations()[:1])


# ------------------------------------------------------------------------- the seed's spellings
def test_the_seed_spellings_live_in_compat():
    for name in ("means", "embeddings_sums", "means_update", "means_lr", "update_means"):
        assert not hasattr(DirectionalClassification, name), name
        assert hasattr(SeedDirectionalClassification, name), name
    track = list(inspect.signature(DirectionalClassification.track).parameters)
    assert track[:3] == ["self", "embeddings", "assignment"] and "annotations" not in track  # one type
    seed = DLDENetWithTrackedMeans(3, embedding_size=6, **SETTINGS)
    assert isinstance(seed.classification, SeedDirectionalClassification)
    assert seed.classification.name == "dlde"
    assert seed.classification.means is seed.tracked_means.means


def test_the_seed_track_with_anchors_is_the_track_with_the_assignment():
    torch.manual_seed(0)
    head = SeedDirectionalClassification(8, 4, 1, 8, 3, means_init="zeros")
    anchors = torch.tensor([[10.0, 10.0, 50.0, 50.0], [20.0, 30.0, 60.0, 62.0], [5.0, 5.0, 14.0, 14.0]])
    embeddings = torch.nn.functional.normalize(torch.randn(2, 3, 4), dim=-1)
    head.track(embeddings, anchors, batch_annotations())
    plain = DirectionalClassification(8, 4, 1, 8, 3, means_init="zeros")
    plain.track(embeddings, plain.assign(anchors, batch_annotations()))
    assert_close(head.means, plain.tracked_means.means, rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs the annotations"):
        head.track(embeddings, anchors)


# ------------------------------------------------------------------------------- the public API
def test_the_root_exports_the_public_api_only():
    assert set(dlde.__all__) == {
        "RetinaNet", "build_detector", "load_detector", "DLDENetWithTrackedMeans", "ResNetFPN",
        "ClassificationHead", "SigmoidClassification", "DirectionalClassification",
        "CosinePrototypeClassification", "TrackedMeans", "CocoDetection", "make_digits_dataset", "DigitsConfig",
        "make_glyphs_dataset", "GlyphsConfig", "evaluate"}
    assert all(f"`{name}`" in dlde.__doc__ for name in dlde.__all__)  # each one documented
    for package in (dlde, dlde.train):
        private = [name for name in vars(package) if name.startswith("_") and not name.startswith("__")]
        assert private == [], f"{package.__name__} re-exports private names"
        assert set(package.__all__) <= set(dir(package))  # imported on first use (dlde.lazy), but listed
        assert all(getattr(package, name) is not None for name in package.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        dlde.__getattr__("nothing")
