"""The portable numeric kernels (dlde.kernels): every process the entry points start runs with them,
whatever the shell set, and a run gives the same numbers whether or not the shell set another value."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlde import kernels
from dlde.kernels import NATIVE_FLAG, PORTABLE_KERNELS, SETTING_VARIABLE
from dlde.train.reproducibility import onednn_isa

ROOT = Path(__file__).resolve().parents[1]
#: What a shell of an AVX-512 machine might set: other values for every pinned variable.
SHELL_VALUES = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO",
                "OPENBLAS_CORETYPE": "SkylakeX", "NUMBA_CPU_NAME": "host", "FAISS_OPT_LEVEL": "avx512"}


def _has_avx512() -> bool:
    """Whether this CPU has AVX-512 (Linux's /proc/cpuinfo; False where it cannot tell)."""
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def shell_environment(values: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without the pin (the tests run pinned, see conftest.py), plus ``values``."""
    environ = {k: v for k, v in os.environ.items() if k not in PORTABLE_KERNELS and k != SETTING_VARIABLE}
    return {**environ, **(values or {})}


class Recorder:
    """Stands in for ``os.execv``: keeps the call instead of replacing the process."""

    def __init__(self):
        self.calls = []

    def __call__(self, path, argv):
        self.calls.append((path, list(argv)))


def test_the_pin_overrides_the_shell_and_the_record_says_which_setting_holds():
    assert set(SHELL_VALUES) == set(PORTABLE_KERNELS)
    pinned = kernels.portable_environment(SHELL_VALUES | {"HOME": "/x"})
    assert {k: pinned[k] for k in PORTABLE_KERNELS} == PORTABLE_KERNELS and pinned["HOME"] == "/x"
    assert pinned[SETTING_VARIABLE] == "portable" and kernels.is_pinned(pinned)
    assert kernels.kernels_record(pinned) == {"setting": "portable", **PORTABLE_KERNELS}
    assert not kernels.is_pinned(SHELL_VALUES)
    assert kernels.kernels_record({})["setting"] == "native"
    assert kernels.kernels_record({**PORTABLE_KERNELS, "MKL_CBWR": "AUTO"})["setting"] == "native"  # one changed


def test_an_entry_point_re_executes_itself_with_the_pin_unless_it_holds_it_or_is_told_native():
    environ, execv = dict(SHELL_VALUES), Recorder()
    kernels.pin_this_process(["--epochs", "2"], module="dlde.train", environ=environ, execv=execv)
    assert execv.calls == [(sys.executable, [sys.executable, "-m", "dlde.train", "--epochs", "2"])]
    assert kernels.is_pinned(environ) and environ[SETTING_VARIABLE] == "portable"

    execv = Recorder()  # the re-executed command finds the pin: it runs
    kernels.pin_this_process(["--epochs", "2"], module="dlde.train", environ=environ, execv=execv)
    assert execv.calls == []

    environ, execv = dict(SHELL_VALUES), Recorder()  # --native-kernels: the shell's values stay
    kernels.pin_this_process(["--epochs", "2", NATIVE_FLAG], module="dlde.train", environ=environ, execv=execv)
    assert execv.calls == [] and environ == {**SHELL_VALUES, SETTING_VARIABLE: "native"}
    kernels.pin_this_process([], module="dlde.train", environ=environ, execv=execv)  # its children keep it
    assert execv.calls == [] and not kernels.is_pinned(environ)


def _train(run_dir: Path, environ: dict[str, str], *extra: str) -> tuple[dict, list[dict]]:
    """``python -m dlde.train`` on the tiny preset in a fresh process; its config.json record and metrics."""
    command = [sys.executable, "-m", "dlde.train", "--preset", "tiny", "--run-dir", str(run_dir),
               "--data-root", str(run_dir.parent / "data"), "--epochs", "1", "--threads", "1", *extra]
    subprocess.run(command, cwd=ROOT, env=environ, check=True, capture_output=True, text=True, timeout=600)
    record = json.loads((run_dir / "config.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return record, metrics


def _numbers(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("time_s")} for row in metrics]


@pytest.mark.slow
def test_a_training_command_gives_the_same_numbers_whatever_the_shell_set(tmp_path):
    plain, plain_metrics = _train(tmp_path / "plain", shell_environment())
    other, other_metrics = _train(tmp_path / "other", shell_environment(SHELL_VALUES))
    for record in (plain, other):
        recorded = record["environment"]["kernels"]
        assert {k: recorded[k] for k in ("setting", *PORTABLE_KERNELS)} == {"setting": "portable", **PORTABLE_KERNELS}
        assert recorded["aten_cpu_capability"] in ("AVX2", "DEFAULT")  # never the AVX-512 path
        assert recorded["onednn_isa"] is not None and "512" not in recorded["onednn_isa"]
    assert _numbers(plain_metrics) == _numbers(other_metrics)

    # Native kernels keep the shell's settings; on a CPU without AVX-512 only the oneDNN cap (harmless above the
    # CPU: oneDNN takes the best it has), since the shell's AVX-512 ATen and OpenBLAS paths would die of SIGILL there.
    native_values = SHELL_VALUES if _has_avx512() else {"ONEDNN_MAX_CPU_ISA": SHELL_VALUES["ONEDNN_MAX_CPU_ISA"]}
    native, _ = _train(tmp_path / "native", shell_environment(native_values), NATIVE_FLAG)
    recorded = native["environment"]["kernels"]
    assert recorded["setting"] == "native" and recorded["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"


@pytest.mark.slow
def test_the_pipeline_s_notebook_kernels_run_with_the_pin_whatever_the_shell_set(tmp_path):
    command = [sys.executable, "-m", "dlde.pipeline", "--config", str(ROOT / "figures.yaml"), "--tiny",
               "--runs-dir", str(tmp_path), "--only", "01"]
    subprocess.run(command, cwd=ROOT, env=shell_environment(SHELL_VALUES), check=True, capture_output=True,
                   text=True, timeout=600)
    record = json.loads((tmp_path / "tiny" / "dlde" / "config.json").read_text())  # written inside the kernel
    recorded = record["environment"]["kernels"]
    assert recorded["setting"] == "portable" and "512" not in (recorded["onednn_isa"] or "512")


def test_this_test_process_runs_with_the_pin_and_onednn_reports_its_instruction_set():
    assert kernels.is_pinned() and kernels.setting() == "portable"  # conftest.py pins the tests like the commands
    isa = onednn_isa()
    assert isa is None or "512" not in isa
    assert onednn_isa() == isa  # oneDNN names its ISA once per process: the answer is kept


def test_the_kernels_command_prints_the_setting_and_runs_a_command_under_it():
    out = subprocess.run([sys.executable, "-m", "dlde.kernels", "--", sys.executable, "-c",
                          "import os, json; print(json.dumps({k: os.environ.get(k) for k in "
                          f"{sorted(PORTABLE_KERNELS)!r}}}))"],
                         env=shell_environment(SHELL_VALUES), capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout) == PORTABLE_KERNELS
    out = subprocess.run([sys.executable, "-m", "dlde.kernels", NATIVE_FLAG], env=shell_environment(SHELL_VALUES),
                         capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout) == {"setting": "native", **SHELL_VALUES}
