"""A dataset is one options dataclass plus one registration (issue 27, item 2): a throwaway dataset
registered here trains through ``dlde.train.train`` and its CLI with no edit of the trainer, the
CLI or the notebooks; its options are checked when the config is made. The built-in datasets keep
the flat keys, flags, presets, run identities and data folders they had as ``TrainConfig`` fields."""
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlde.data.coco import CocoFiles
from dlde.data.registry import DATASETS, all_dataset_options
from dlde.errors import ConfigError, Key
from dlde.pipeline.run_config import train_config
from dlde.train import PRESETS, TrainConfig, default_data_root, main, train
from dlde.train.cli import _parser, arguments
from dlde.train.config import flatten
from dlde.train.runs import RunFolder, run_identity

COLORS = ("red", "green")


@dataclass(frozen=True)
class SquaresOptions:
    """A throwaway dataset: one red or green square (the class) on each black 64 px canvas."""

    squares_images: int = 6
    squares_seed: int = 0

    def __post_init__(self):
        if self.squares_images < len(COLORS):
            raise ConfigError("{images} must be >= {least} (one image per color), got {got}",
                              images=Key("squares_images"), least=len(COLORS), got=self.squares_images)

    def default_root(self, base):
        return Path(base) / f"squares-{self.squares_seed}-{self.squares_images}"

    def build(self, root) -> CocoFiles:
        rng, root, files = np.random.default_rng(self.squares_seed), Path(root), []
        categories = [{"id": label + 1, "name": name} for label, name in enumerate(COLORS)]
        for split, count in (("train", self.squares_images), ("val", len(COLORS))):
            (root / split).mkdir(parents=True, exist_ok=True)
            images, annotations = [], []
            for index in range(count):
                label, side = index % len(COLORS), int(rng.integers(16, 33))
                x, y = (int(v) for v in rng.integers(0, 64 - side, size=2))
                pixels = np.zeros((64, 64, 3), np.uint8)
                pixels[y : y + side, x : x + side, label] = 255
                Image.fromarray(pixels).save(root / split / f"{index:03d}.png")
                images.append({"id": index + 1, "file_name": f"{index:03d}.png", "width": 64, "height": 64})
                annotations.append({"id": index + 1, "image_id": index + 1, "category_id": label + 1,
                                    "bbox": [x, y, side, side], "area": side * side, "iscrowd": 0})
            (root / f"{split}.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                            "categories": categories}))
            files += [root / split, root / f"{split}.json"]
        return CocoFiles(*files)


@pytest.fixture
def squares(monkeypatch):
    """The throwaway dataset, registered for one test."""
    monkeypatch.setitem(DATASETS, "squares", SquaresOptions)


def tiny(tmp_path, **values) -> TrainConfig:
    return TrainConfig.from_dict({"run_dir": str(tmp_path / "run"), "data_root": str(tmp_path / "data"),
                                  "epochs": 1, "threads": 1, "progress": False, **values}, preset="tiny")


def cli_error(capsys, words) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(words)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------ a new dataset: one class, one line
def test_a_registered_dataset_trains_one_tiny_epoch(tmp_path, squares):
    config = tiny(tmp_path, dataset="squares", squares_images=4)
    assert config.dataset_options["squares_images"] == 4 and config.dataset_settings() == SquaresOptions(4)
    result = train(config)
    assert len(result.metrics) == 1 and np.isfinite(result.metrics[0]["train_loss"])
    assert result.class_names == list(COLORS)
    assert sorted(path.name for path in (tmp_path / "data" / "train").iterdir()) == ["000.png", "001.png",
                                                                                       "002.png", "003.png"]
    record = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert record["dataset_options"]["squares_images"] == 4
    assert TrainConfig.from_dict(record) == config  # config.json round trip
    folder = RunFolder(tmp_path / "run")
    assert folder.is_complete(config) and folder.is_complete(flatten(config))  # nested or flat
    assert folder.state(config.updated({"squares_images": 5})) == "changed"  # its options are the run's identity
    assert default_data_root(config, tmp_path) == tmp_path / "squares-0-4"


def test_its_options_are_checked_when_the_config_is_made_naming_the_key(tmp_path, squares):
    for values, key in (({"squares_images": 1}, "squares_images"), ({"squares_seed": 0.5}, "squares_seed")):
        with pytest.raises(ConfigError) as info:
            tiny(tmp_path, dataset="squares", **values)
        assert info.value.key == key and key in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="an option of no registered dataset"):
        tiny(tmp_path, dataset="squares", dataset_options={"squares_imgs": 4})
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys \['squares_imgs'\].*dataset options: .*squares"):
        tiny(tmp_path, dataset="squares", squares_imgs=4)
    with pytest.raises(ConfigError, match="dataset must be one of coco, digits, glyphs, squares; got 'circles'"):
        tiny(tmp_path, dataset="circles")
    # The notebook names its OVERRIDES_JSON key (the command line its flag: below); nothing is written.
    with pytest.raises(ConfigError, match=r'"squares_images" in OVERRIDES_JSON must be >= 2'):
        train_config({"PRESET": "tiny", "RUN_DIR": str(tmp_path / "run"), "DATA_ROOT": str(tmp_path / "data"),
                      "OVERRIDES_JSON": '{"dataset": "squares", "squares_images": 1}'})
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_the_cli_shows_its_flags_and_sets_them(tmp_path, squares, capsys):
    help_text = _parser("tiny").format_help()
    assert "--squares-images" in help_text and "option of squares" in help_text and "squares}" in help_text
    config = tiny(tmp_path, dataset="squares", squares_images=4)
    words = arguments(config, "tiny")
    assert words[words.index("--squares-images") + 1] == "4"
    parsed = {key: value for key, value in vars(_parser("tiny").parse_args(words)).items() if value is not None}
    assert TrainConfig.from_dict({k: v for k, v in parsed.items() if k != "preset"}, preset="tiny") == config
    err = cli_error(capsys, [*words, "--squares-images", "1"])
    assert "--squares-images must be >= 2 (one image per color), got 1" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_two_datasets_may_not_share_an_option_name(monkeypatch):
    @dataclass(frozen=True)
    class Clash:
        digits_seed: int = 0

    monkeypatch.setitem(DATASETS, "clash", Clash)
    with pytest.raises(ValueError, match="datasets 'digits' and 'clash' both declare option 'digits_seed'"):
        all_dataset_options()


# ------------------------------------------------------- the built-in datasets: as when they were fields
#: Measured on the code before the registry (flat TrainConfig fields): every preset's dataset options
#: and generated data folder.
DIGITS_PRESET = {"digits_canvas_size": 64, "digits_size": [12, 24], "digits_per_image": [1, 3],
                 "digits_train_images": 2000, "digits_val_images": 400, "digits_classes": None}
PRESET_DATA = {
    "digits": (DIGITS_PRESET, "digits-de11be2522f5"),
    "tiny": ({"digits_canvas_size": 64, "digits_size": [16, 24], "digits_per_image": [1, 2], "digits_train_images": 32,
              "digits_val_images": 16, "digits_classes": [0, 1, 2]}, "digits-5a89871087e8"),
    "glyphs-100": (DIGITS_PRESET | {"glyphs_classes": 100}, "glyphs-ef742bb12d1c"),
    "glyphs-300": (DIGITS_PRESET | {"glyphs_classes": 300}, "glyphs-6b949825ac12"),
    "glyphs-1000": (DIGITS_PRESET | {"glyphs_classes": 1000}, "glyphs-56ee8811c465"),
}
DEFAULTS = {"digits_seed": 0, "digits_canvas_size": 128, "digits_size": [20, 40], "digits_per_image": [1, 3],
            "digits_train_images": 2000, "digits_val_images": 400, "digits_classes": None, "glyphs_seed": 0,
            "glyphs_classes": 1000, "glyphs_canvas_size": 96, "glyphs_size": [12, 24], "glyphs_per_image": [10, 16],
            "glyphs_val_images": 500, "glyphs_bucket_shares": [337.0, 461.0, 405.0], "glyphs_max_images": 150,
            "train_images": None, "train_annotations": None, "val_images": None, "val_annotations": None}


@pytest.mark.parametrize("preset", PRESET_DATA)
def test_presets_keep_their_values_identities_and_data_folders(preset):
    options, folder = PRESET_DATA[preset]
    identity = run_identity(PRESETS[preset])
    assert {key: identity[key] for key in DEFAULTS} == DEFAULTS | options
    assert default_data_root(PRESETS[preset]) == Path("data") / folder
    # An old record (the dataset options as flat fields) is the same run and finds the same data.
    fields = {key: value for key, value in PRESETS[preset].to_dict().items() if key != "dataset_options"}
    old = fields | DEFAULTS | options
    assert run_identity(old) == identity
    assert TrainConfig.from_dict(old).dataset_settings() == PRESETS[preset].dataset_settings()
    assert default_data_root(TrainConfig.from_dict(old)) == Path("data") / folder


def test_flat_keys_are_routed_into_dataset_options():
    config = TrainConfig.from_dict({"glyphs_classes": 100, "digits_train_images": 48, "epochs": 1}, preset="tiny")
    assert config.dataset_options["glyphs_classes"] == 100 and config.dataset_options["digits_train_images"] == 48
    assert config == TrainConfig.from_dict({"dataset_options": {"glyphs_classes": 100, "digits_train_images": 48},
                                            "epochs": 1}, preset="tiny")
    assert config.dataset_settings().digits_train_images == 48
    assert config.dataset_settings("glyphs").glyphs_classes == 100
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert flatten(config)["digits_size"] == [16, 24] and "dataset_options" not in flatten(config)
    parsed = vars(_parser("glyphs-100").parse_args(["--glyphs-classes", "1000", "--digits-size", "12", "20"]))
    flags = TrainConfig.from_dict({k: v for k, v in parsed.items() if v is not None and k != "preset"},
                                  preset="glyphs-100")
    assert flags.dataset_options["glyphs_classes"] == 1000 and flags.dataset_options["digits_size"] == (12, 20)
    assert dataclasses.replace(flags, dataset="digits").dataset_settings().digits_size == (12, 20)
    overrides = train_config({"PRESET": "tiny", "OVERRIDES_JSON": '{"digits_train_images": 48}'})
    assert overrides.dataset_options["digits_train_images"] == 48
