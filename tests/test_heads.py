"""The classification-head seam: one registry, one protocol, one assignment per step, defaults once."""
import inspect
import re
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import torch
from helpers import SMALL, batch_annotations
from torch.testing import assert_close

import dlde.model.anchors
import dlde.model.detector
import dlde.model.directional
import dlde.model.losses
import dlde.model.registry
import dlde.train.cli
import dlde.train.validation
from dlde import CosinePrototypeClassification, DLDENetWithTrackedMeans, RetinaNet, build_detector, load_detector
from dlde.model.compat import SubModule
from dlde.model.heads import ClassificationHead, HeadTower, SigmoidClassification
from dlde.model.means import MeansConfig
from dlde.train import PRESETS, TrainConfig, build_model, train

ROOT = Path(__file__).resolve().parents[1]


def small(name, **head_options):
    return build_detector(name, 3, head_options=head_options, features=SMALL, pretrained=False, head_convs=1,
                          fpn_levels=[3, 4])


@pytest.mark.parametrize("name", sorted(dlde.model.registry.HEADS))
def test_every_registered_head_trains_and_round_trips(name, tmp_path):
    model = small(name, **({"embedding_size": 6} if name != "retinanet" else {}))
    model.train()
    images, annotations = torch.randn(2, 3, 64, 64), batch_annotations()
    output = model(images, annotations)
    assert output.assignment is not None
    losses = model.loss(*output, annotations, assignment=output.assignment)
    sum(losses.values()).backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name
    probabilities = output[2]
    assert probabilities.shape[-1] == 3 and 0 <= probabilities.min() and probabilities.max() <= 1
    restored = load_detector(model.save(tmp_path / "m.pt"))
    assert restored.classification.name == name and restored.classification.options() == model.classification.options()
    model.eval(), restored.eval()
    image = torch.randn(1, 3, 64, 64)
    assert_close(model(image)[0][1], restored(image)[0][1])


def test_prototype_head_is_a_cosine_classifier_with_learned_prototypes():
    head = CosinePrototypeClassification(8, 1, 8, 3, embedding_size=4, cosine_scale=10.0, prior=0.01)
    with torch.no_grad():
        head.prototypes.copy_(torch.eye(3, 4) * 5)  # renormalised at use
        head.bias.zero_()
    e = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]])
    expected = torch.sigmoid(10 * torch.tensor([[1.0, 0, 0], [0, 0, 0]]))
    assert_close(head.classify(e), expected)
    assert head.tracked_means is None
    assert_close(head.class_directions(), torch.eye(3, 4))
    learned = CosinePrototypeClassification(8, 1, 8, 3, learn_scale=True)
    assert any(name == "log_scale" for name, _ in learned.named_parameters())


def test_a_new_head_is_one_class_plus_one_registry_line(tmp_path, monkeypatch):
    class Constant(ClassificationHead):
        """A deliberately trivial head: one learned logit per class, the same for every anchor."""
        name = "constant"

        @dataclass(frozen=True)
        class Options:
            start: float = -2.0

        def __init__(self, in_channels, anchors, features, classes, *, start=Options.start, convs=4, group_norm=False):
            super().__init__()
            self.start = start
            self.logit = torch.nn.Parameter(torch.full((classes,), start))
            self.anchors = anchors

        def options(self):
            return {"start": self.start}

        def forward(self, feature_maps, anchors=None, annotations=None, *, assignment=None):
            count = sum(x.shape[-2] * x.shape[-1] for x in feature_maps) * self.anchors
            return torch.sigmoid(self.logit).expand(feature_maps[0].shape[0], count, -1)

    monkeypatch.setitem(dlde.model.registry.HEADS, "constant", Constant)  # the one registry line
    config = TrainConfig.from_dict({"model": "constant", "run_dir": str(tmp_path / "run"),
                                    "data_root": str(tmp_path / "data"), "epochs": 1, "max_train_batches": 2,
                                    "progress": False}, preset="tiny")
    result = train(config)
    assert result.model.classification.name == "constant"
    assert result.model.tracked_means is None and not (result.run_dir / "means_history.npy").exists()
    assert load_detector(result.run_dir / "checkpoint.pt").classification.options() == {"start": -2.0}


def test_anchors_are_assigned_once_per_training_step(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = dlde.model.anchors.assign_batch

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    for module in (dlde.model.detector, dlde.model.losses, dlde.model.directional):
        monkeypatch.setattr(module, "assign_batch", counting)
    model = small("dlde", embedding_size=6).train()
    annotations = batch_annotations()
    output = model(torch.randn(2, 3, 64, 64), annotations)
    model.loss(*output, annotations, assignment=output.assignment)
    assert calls["n"] == 1  # tracking and the loss share the forward's assignment
    # The trainer does the same: one per training step, plus one per validation-loss batch.
    calls["n"] = 0
    config = TrainConfig.from_dict({"run_dir": str(tmp_path / "run"), "data_root": str(tmp_path / "data"),
                                    "epochs": 1, "max_train_batches": 3, "eval_batch_size": 16,
                                    "progress": False}, preset="tiny")
    monkeypatch.setattr(dlde.train.validation, "evaluate", lambda *a, **k: {"per_class": {}})
    train(config)
    assert calls["n"] == 3 + 1  # 3 training steps, 16 validation images in one batch


def test_trainer_runs_and_notebooks_never_ask_which_detector_they_hold():
    sources = [ROOT / "dlde" / name for name in ("train/loop.py", "train/runs.py", "analysis/inspection.py",
                                                 "pipeline/notebook.py", "pipeline/execute.py")]
    sources += sorted((ROOT / "notebooks").glob("*.ipynb"))
    pattern = re.compile(r"isinstance\([^)]*(DLDENetWithTrackedMeans|RetinaNet|DirectionalClassification)|\.tracker\b")
    offenders = [f"{path.name}: {match.group(0)}" for path in sources for match in pattern.finditer(path.read_text())]
    assert offenders == []


def test_every_default_is_written_once():
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for name, head in dlde.model.registry.HEADS.items():
        for option in fields(head.Options):
            if option.name in defaults:
                assert defaults[option.name] == option.default, (name, option.name)
    directional = dlde.model.directional.DirectionalClassification.Options
    assert (directional.means_lr, directional.means_update, directional.means_init, directional.means_lr_schedule) == (
        MeansConfig.lr, MeansConfig.update, MeansConfig.init, MeansConfig.lr_schedule)
    prototypes = CosinePrototypeClassification.Options
    assert (prototypes.prior, prototypes.classifier_init) == (SigmoidClassification.Options.prior,
                                                               directional.classifier_init)
    seed_entry = inspect.signature(DLDENetWithTrackedMeans.__init__).parameters
    for option in fields(directional):
        assert seed_entry[option.name].default == option.default, option.name
    detector = inspect.signature(RetinaNet.__init__).parameters
    for name in ("resnet", "head_convs", "group_norm", "box_loss"):
        assert defaults[name] == detector[name].default, name
    assert detector["prior"].default == SigmoidClassification.Options.prior
    # Presets only override; the tiny preset (every test) now trains at the model's means_lr.
    assert "means_lr" not in PRESETS["tiny"].head_options
    # The CLI shows the defaults of the preset in use.
    help_text = dlde.train.cli._parser("tiny").format_help()
    assert f"preset tiny: {PRESETS['tiny'].head_options['embedding_size']}" in help_text
    assert "{dlde,prototypes,retinanet}" in help_text


def test_means_lr_lives_in_one_place_after_construction():
    model = DLDENetWithTrackedMeans(3, features=SMALL, pretrained=False, head_convs=1, fpn_levels=[3])
    model.means_lr = 0.05
    assert model.classification.tracker.lr == 0.05 == model.means_lr
    assert model.classification.options()["means_lr"] == 0.05
    with pytest.raises(ValueError, match="means_lr"):
        model.means_lr = 0.0


def test_old_flat_checkpoints_still_load(tmp_path):
    model = DLDENetWithTrackedMeans(3, features=SMALL, pretrained=False, head_convs=1, fpn_levels=[3, 4],
                                    embedding_size=6, means_lr=0.2)
    arguments = model.constructor_arguments()
    head = arguments.pop("head")
    old = {"model": model.state_dict(),
           "hyperparameters": {"model": {**arguments, **{k: v for k, v in head["options"].items()
                                                          if k in ("embedding_size", "means_update", "means_lr",
                                                                   "means_init")}}}}
    torch.save(old, tmp_path / "old.pt")
    for cls in (DLDENetWithTrackedMeans, RetinaNet):
        restored = cls.from_checkpoint(tmp_path / "old.pt")
        assert restored.classification.name == "dlde" and restored.tracked_means.lr == 0.2
        assert_close(restored.tracked_means.means, model.tracked_means.means)
    sigmoid = RetinaNet(3, features=SMALL, pretrained=False, head_convs=1, fpn_levels=[3])
    arguments = sigmoid.constructor_arguments()
    arguments.pop("head")
    torch.save({"model": sigmoid.state_dict(), "hyperparameters": {"model": arguments}}, tmp_path / "old_r.pt")
    assert RetinaNet.from_checkpoint(tmp_path / "old_r.pt").classification.name == "retinanet"


def test_build_model_uses_the_registry_and_the_config_options(tmp_path):
    config = TrainConfig.from_dict({"model": "prototypes", "cosine_scale": 10.0, "embedding_size": 5}, preset="tiny")
    model = build_model(config, 3)
    assert isinstance(model.classification, CosinePrototypeClassification)
    assert model.classification.options()["embedding_size"] == 5
    assert model.classification.options()["cosine_scale"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="model must be one of"):
        TrainConfig(model="yolo")
    assert SubModule is HeadTower  # the seed's name of the head tower
