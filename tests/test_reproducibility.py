"""One seed, one result: the same config gives the same numbers from every entry point,
whatever display options are on (progress bar, CLI, notebook under papermill, benchmark)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlde.train import TrainConfig, main, train

ROOT = Path(__file__).resolve().parents[1]
#: What a run's numbers may differ in: wall times.
TIMES = ("time_s", "train_time_s")


def numbers(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in row.items() if key not in TIMES} for row in rows]


def tiny(tmp_path, name, **overrides):
    return TrainConfig.from_dict({"run_dir": str(tmp_path / name), "data_root": str(tmp_path / "data"),
                                  "epochs": 2, **overrides}, preset="tiny")


@pytest.mark.slow
def test_progress_on_or_off_and_the_cli_give_identical_metrics(tmp_path, capsys):
    off = train(tiny(tmp_path, "off", progress=False))
    on = train(tiny(tmp_path, "on", progress=True))
    main(["--preset", "tiny", "--epochs", "2", "--run-dir", str(tmp_path / "cli"),
          "--data-root", str(tmp_path / "data"), "--progress", "true"])
    capsys.readouterr()
    reference = numbers(off.run_dir)
    assert len(reference) == 2 and "AP" in reference[-1]
    assert numbers(on.run_dir) == reference  # losses to the last bit, AP identical
    assert numbers(tmp_path / "cli") == reference
    torch.testing.assert_close(on.model.tracked_means.means, off.model.tracked_means.means, rtol=0, atol=0)


@pytest.mark.slow
def test_config_json_records_what_decides_the_numbers(tmp_path):
    previous = torch.get_num_threads()
    try:
        result = train(tiny(tmp_path, "run", epochs=1, threads=1, max_train_batches=1))
        assert torch.get_num_threads() == 1  # the trainer sets the count it records
    finally:
        torch.set_num_threads(previous)
    environment = json.loads((result.run_dir / "config.json").read_text())["environment"]
    assert environment["threads"] == 1
    assert environment["torch"] == torch.__version__
    for key in ("numpy", "python", "device", "deterministic_algorithms", "cudnn_deterministic"):
        assert key in environment
    with pytest.raises(ValueError, match="threads must be >= 1"):
        train(tiny(tmp_path, "bad", threads=0))


@pytest.mark.slow
def test_notebook_and_benchmark_reproduce_the_cli(tmp_path):
    import papermill

    from dlde.pipeline.execute import PAPERMILL_OPTIONS

    # The thread count is part of the config: every entry point gets the same explicit value, so
    # the comparison does not depend on what an earlier test or the environment left behind.
    main(["--preset", "tiny", "--epochs", "2", "--run-dir", str(tmp_path / "cli"),
          "--data-root", str(tmp_path / "data"), "--progress", "false", "--threads", "2"])
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "01_train.ipynb"), str(tmp_path / "01_train.ipynb"),
        parameters={"PRESET": "tiny", "EPOCHS": 2, "RUN_DIR": str(tmp_path / "notebook"),
                    "DATA_ROOT": str(tmp_path / "data"), "FIGURES_DIR": str(tmp_path / "figures"),
                    "DETECTION_IMAGES": 2, "OVERRIDES_JSON": json.dumps({"progress": True, "threads": 2})},
        cwd=str(tmp_path), **PAPERMILL_OPTIONS)
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "digits_quality.py"), "--preset", "tiny",
                    "--epochs", "2", "--models", "dlde", "--out", str(tmp_path / "bench"),
                    "--data-root", str(tmp_path / "data"), "--threads", "2"], check=True, capture_output=True,
                   cwd=tmp_path)
    reference = numbers(tmp_path / "cli")
    assert numbers(tmp_path / "notebook") == reference
    assert numbers(tmp_path / "bench" / "dlde_seed0") == reference
