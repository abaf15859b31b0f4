"""The training config and its command line: one head_options mapping, every option of every
registered head settable from dicts, old records and the shell, with no trainer edit for a new head."""
import dataclasses
import json
from dataclasses import dataclass

import pytest
import torch

import dlde.model.registry
from dlde import load_detector
from dlde.model.heads import ClassificationHead
from dlde.train import PRESETS, TrainConfig, build_model
from dlde.train.cli import _parser, arguments, main
from dlde.train.config import flatten


def test_flat_head_option_names_are_routed_into_head_options():
    config = TrainConfig.from_dict({"means_lr": 0.01, "prior": 0.05, "epochs": 3}, preset="digits")
    assert config.head_options == {"embedding_size": 32, "means_init": "orthogonal", "means_lr": 0.01,
                                   "center_momentum": 0.9, "prior": 0.05}
    assert config.epochs == 3 and PRESETS["digits"].head_options["means_lr"] == 0.003  # the preset is untouched
    nested = TrainConfig.from_dict({"head_options": {"means_lr": 0.01, "prior": 0.05}, "epochs": 3}, preset="digits")
    assert nested == config
    assert config.to_dict()["head_options"] == config.head_options
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # config.json round trip
    assert flatten(config)["means_lr"] == 0.01 and "head_options" not in flatten(config)
    # The head built takes the options it declares; the others wait for a head that has them.
    assert config.own_head_options() == {"embedding_size": 32, "means_init": "orthogonal", "means_lr": 0.01,
                                         "center_momentum": 0.9}
    assert dataclasses.replace(config, model="retinanet").own_head_options() == {"prior": 0.05}


def test_an_old_flat_record_gives_the_head_the_same_options():
    legacy = {"model": "dlde", "epochs": 2, "embedding_size": 8, "means_update": "batch", "means_lr": 0.003,
              "means_init": "orthogonal", "cosine_scale": 20.0, "learn_scale": False, "amp": False}
    config = TrainConfig.from_dict(legacy)
    assert config.amp == "off"
    assert config.own_head_options() == {"embedding_size": 8, "means_update": "batch", "means_lr": 0.003,
                                         "means_init": "orthogonal"}


def test_unknown_keys_and_head_options_fail_loudly():
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys \['means_lrr'\]; valid keys: .*'epochs'.*"
                                         r"head options: .*'means_lr'"):
        TrainConfig.from_dict({"means_lrr": 0.1})
    with pytest.raises(ValueError, match=r"head_options has \['nope'\], an option of no registered head"):
        TrainConfig(head_options={"nope": 1})
    with pytest.raises(ValueError, match="allow_changed names unknown fields"):
        TrainConfig(allow_changed=("means_lrr",))
    assert TrainConfig(allow_changed=("means_lr", "epochs")).allow_changed == ("means_lr", "epochs")


def test_the_cli_has_a_flag_for_every_head_option_and_round_trips_a_config():
    help_text = _parser("digits").format_help()
    for flag in ("--embedding-size", "--means-lr", "--prior", "--init-weight", "--init-bias", "--cosine-scale",
                 "--learn-scale"):
        assert flag in help_text, flag
    assert "--head-options" not in help_text
    config = TrainConfig.from_dict({"model": "prototypes", "prior": 0.05, "learn_scale": True, "epochs": 3,
                                    "fpn_levels": [3], "grad_clip": 5.0}, preset="tiny")
    words = arguments(config, "tiny")
    assert words[:2] == ["--preset", "tiny"] and "--prior" in words and "--learn-scale" in words
    parsed = {key: value for key, value in vars(_parser("tiny").parse_args(words)).items() if value is not None}
    assert TrainConfig.from_dict({k: v for k, v in parsed.items() if k != "preset"}, preset="tiny") == config
    with pytest.raises(ValueError, match="None cannot be passed"):
        arguments(dataclasses.replace(config, grad_clip=None), "tiny")


class Offset(ClassificationHead):
    """A throwaway head: one learned logit per class, starting at its option ``start``."""

    name = "offset"

    @dataclass(frozen=True)
    class Options:
        start: float = -2.0
        embedding_size: int = 4  # shared with other heads: the preset's value reaches this head too

    def __init__(self, in_channels, anchors, features, classes, *, start=Options.start,
                 embedding_size=Options.embedding_size, convs=4, group_norm=False):
        super().__init__()
        self.start, self.embedding_size = float(start), int(embedding_size)
        self.logit = torch.nn.Parameter(torch.full((classes,), self.start))
        self.anchors = anchors

    def options(self):
        return {"start": self.start, "embedding_size": self.embedding_size}

    def forward(self, feature_maps, anchors=None, annotations=None, *, assignment=None):
        count = sum(x.shape[-2] * x.shape[-1] for x in feature_maps) * self.anchors
        return torch.sigmoid(self.logit).expand(feature_maps[0].shape[0], count, -1)


@pytest.mark.slow
def test_a_head_registered_at_run_time_trains_with_its_option_from_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(dlde.model.registry.HEADS, "offset", Offset)  # the one registry line, nothing else
    assert "--start" in _parser("tiny").format_help()
    result = main(["--preset", "tiny", "--model", "offset", "--start", "0.25", "--epochs", "1",
                   "--max-train-batches", "1", "--run-dir", str(tmp_path / "run"),
                   "--data-root", str(tmp_path / "data")])
    capsys.readouterr()
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["config"]["model"] == "offset"
    assert record["config"]["head_options"] == {"embedding_size": 8, "start": 0.25}
    restored = load_detector(result.run_dir / "checkpoint.pt")
    assert restored.classification.name == "offset"
    assert restored.classification.options() == {"start": 0.25, "embedding_size": 8}
    assert build_model(TrainConfig.from_dict(record["config"]), 3).classification.start == 0.25
