"""The model's structure: a narrow detector, a leaf registry, heads injected one way, and the
operations on a model (tracking pass, class growth, checkpoint layouts) beside it."""
import ast
from pathlib import Path

import pytest
import torch
from helpers import SMALL, batch_annotations
from torch.testing import assert_close

from dlde import DLDENetWithTrackedMeans, RetinaNet, build_detector
from dlde.model.growth import add_classes, imprint
from dlde.model.registry import all_head_options, head_factory
from dlde.model.tracking import track_batch

ROOT = Path(__file__).resolve().parents[1]


def test_the_detector_has_a_narrow_public_surface():
    own = {name for name in vars(RetinaNet) if not name.startswith("_")}
    assert own == {"check_images", "forward", "assign", "loss", "postprocess", "predict", "tracked_means",
                   "class_directions", "embeddings", "class_names", "save", "constructor_arguments",
                   "from_checkpoint"}


def test_the_registry_is_a_leaf():
    tree = ast.parse((ROOT / "dlde" / "model" / "registry.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {name for name in imported if name and ("detector" in name or "builders" in name)}


def test_a_misspelt_head_option_fails_before_any_weight_is_drawn():
    state = torch.random.get_rng_state()
    with pytest.raises(ValueError, match="embeding_size"):
        head_factory("dlde", embeding_size=8)
    assert torch.equal(state, torch.random.get_rng_state())
    assert {"embedding_size", "means_lr", "prior", "cosine_scale"} <= set(all_head_options())


def test_every_way_to_build_dlde_draws_the_same_weights():
    def weights(build):
        torch.manual_seed(0)
        return build().state_dict()

    kwargs = dict(features=SMALL, pretrained=False, head_convs=1, fpn_levels=[3, 4])
    seed_entry = weights(lambda: DLDENetWithTrackedMeans(3, embedding_size=6, **kwargs))
    by_name = weights(lambda: build_detector("dlde", 3, head_options={"embedding_size": 6}, **kwargs))
    injected = weights(lambda: RetinaNet(3, classification_head=head_factory("dlde", embedding_size=6), **kwargs))
    for other in (by_name, injected):
        assert seed_entry.keys() == other.keys()
        for key in seed_entry:
            assert torch.equal(seed_entry[key], other[key]), key


def test_track_batch_is_the_seed_initializing_pass():
    torch.manual_seed(0)
    seed_model = DLDENetWithTrackedMeans(3, embedding_size=6, features=SMALL, pretrained=False, head_convs=1,
                                         fpn_levels=[3, 4], means_init="zeros")
    model = RetinaNet.from_checkpoint({"model": seed_model.state_dict(),
                                       "hyperparameters": {"model": seed_model.constructor_arguments()}})
    images = torch.randn(2, 3, 64, 64)
    assert seed_model(images, batch_annotations(), initializing=True) is None
    track_batch(model, images, batch_annotations())
    assert_close(model.tracked_means.means, seed_model.tracked_means.means, rtol=0, atol=0)
    assert_close(model.tracked_means.means.norm(dim=1), torch.ones(3))
    sigmoid = build_detector("retinanet", 3, features=SMALL, pretrained=False, head_convs=1, fpn_levels=[3])
    with pytest.raises(TypeError, match="has none"):
        track_batch(sigmoid, images, batch_annotations())


def test_growth_is_an_operation_on_the_model(tmp_path):
    model = build_detector("dlde", 3, head_options={"embedding_size": 6}, features=SMALL, pretrained=False,
                           head_convs=1, fpn_levels=[3, 4])
    assert add_classes(model, 1, names=["new"]) == [3]
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.zeros(0, 4)]
    assert imprint(model, "new", torch.randn(2, 3, 64, 64), boxes) > 0
    restored = RetinaNet.from_checkpoint(model.save(tmp_path / "grown.pt"))
    assert restored.class_names == ["0", "1", "2", "new"]
    assert_close(restored.tracked_means.means, model.tracked_means.means)
