"""Sweep runs as submitit jobs (dlde.pipeline.executors): options, the Slurm submission, the job
function's kernels, and a tiny sweep end to end through submitit's LocalExecutor."""
import functools
import json
import os
import stat
from pathlib import Path

import pytest
import submitit

from dlde.kernels import PORTABLE_KERNELS, SETTING_VARIABLE
from dlde.kernels import setting as kernel_setting
from dlde.pipeline import sweeps as sweeps_module
from dlde.pipeline.cli import main
from dlde.pipeline.executors import JobOptions, JobRunner, job_environment, job_options, make_executor
from dlde.pipeline.run_config import train_config
from dlde.pipeline.sweeps import make_sweep_plan, train_job
from dlde.train import RunFolder, train

TINY = "{PRESET: tiny, EPOCHS: 2, DETECTION_IMAGES: 1, DATA_ROOT: data}"
SWEEPS = f"""\
runs_dir: runs
figures_dir: figures
sweeps:
  size:
    base: {TINY}
    grid: {{embedding_size: [4, 8]}}
    seeds: [0]
  broken:
    base: {TINY}
    arms: {{broken: {{DATA_ROOT: figures.yaml}}}}  # a file: the job's notebook fails making the data
    seeds: [1]
"""
SLURM = """\
slurm:
  partition: cpu
  time: 90
  cpus_per_task: 4
  sbatch: {account: lab}
"""


def write_yaml(folder: Path, text: str) -> Path:
    path = folder / "figures.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------ options
def test_the_slurm_section_gives_the_options_and_flags_override_it():
    options = job_options({"partition": "cpu", "time": 90, "sbatch": {"account": "lab"}},
                          {"partition": "gpu", "mem": "16G", "time": None})
    assert options == JobOptions(partition="gpu", time=90, mem="16G", sbatch={"account": "lab"})
    assert job_options(None) == JobOptions()
    with pytest.raises(ValueError, match=r"figures.yaml: slurm: unknown keys \['partiton'\]"):
        job_options({"partiton": "cpu"}, where="figures.yaml: slurm")
    with pytest.raises(ValueError, match="time must be a positive whole number"):
        job_options({"time": "4:00:00"})
    with pytest.raises(ValueError, match="sbatch must map"):
        job_options({"sbatch": ["--account=lab"]})


def test_a_bad_slurm_section_fails_before_anything_runs(tmp_path, capsys):
    config = write_yaml(tmp_path, SWEEPS + "slurm: {cpus: 4}\n")
    assert main(["--config", str(config), "--sweeps", "size", "--executor", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "slurm: unknown keys ['cpus']" in err
    assert not (tmp_path / "runs").exists()


# -------------------------------------------------------------------------------------- slurm
def test_executor_slurm_without_sbatch_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    config = write_yaml(tmp_path, SWEEPS + SLURM)
    assert main(["--config", str(config), "--sweeps", "size", "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --executor slurm: sbatch is not on the PATH; submit from a Slurm login node, " \
                  "or use --executor local\n"
    assert not (tmp_path / "runs").exists()


def fake_command(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_the_slurm_jobs_ask_for_the_options_of_figures_yaml_and_the_flags(tmp_path, monkeypatch):
    # sbatch and srun stand-ins: submitit writes its real submission script, "sbatch" keeps a copy.
    bin_dir, copy = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    fake_command(bin_dir, "sbatch", f'cp "$1" {copy}\necho "Submitted batch job 4242"\n')
    fake_command(bin_dir, "srun", "exit 1\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    plan = make_sweep_plan(write_yaml(tmp_path, SWEEPS + SLURM), ["size"])
    runner = make_executor("slurm", plan.figures, {"partition": "gpu", "mem": "16G", "log_folder": "logs/%j"})
    assert isinstance(runner.executor, submitit.SlurmExecutor) and runner.at_once is None
    job = runner.executor.submit(print, "hello")
    assert job.job_id == "4242"
    lines = copy.read_text().splitlines()
    for line in ("--partition=gpu", "--time=90", "--cpus-per-task=4", "--mem=16G", "--account=lab",
                 "--job-name=dlde-sweep", f"--output={tmp_path}/logs/%j/%j_0_log.out"):
        assert f"#SBATCH {line}" in lines, line


# --------------------------------------------------------------------------------- the job
def test_a_job_starts_its_kernel_under_the_submitting_process_setting(tmp_path, monkeypatch):
    plan = make_sweep_plan(write_yaml(tmp_path, SWEEPS), ["size"])
    key = next(iter(plan.runs))
    seen = []

    def fake_train(plan, key, label, **options):  # what the kernel started here would inherit
        seen.append({name: os.environ.get(name) for name in [*PORTABLE_KERNELS, SETTING_VARIABLE]})
        return "trained", 1.5

    monkeypatch.setattr(os, "environ", {name: value for name, value in os.environ.items()
                                        if name not in PORTABLE_KERNELS and name != SETTING_VARIABLE})
    monkeypatch.setattr(sweeps_module, "_train", fake_train)
    job = functools.partial(train_job, plan, key, "label", force=False, log_output=False, threads=1)
    assert job(kernels="portable") == sweeps_module.RunOutcome(key, "trained", 1.5)
    assert seen[0] == {**PORTABLE_KERNELS, SETTING_VARIABLE: "portable"} == job_environment("portable")
    job(kernels="native")
    assert seen[1][SETTING_VARIABLE] == "native"

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(sweeps_module, "_train", broken)
    outcome = job(kernels="portable")
    assert outcome.status == "FAILED" and outcome.reason == "RuntimeError: no kernel"


def test_a_job_that_ends_without_a_result_names_its_log(tmp_path, monkeypatch):
    # submitit waits _results_timeout_s (15 s) for the result file of a job that wrote none; 1 s is enough here
    monkeypatch.setattr(submitit.core.core.Job, "_results_timeout_s", 1)
    runner = JobRunner(submitit.LocalExecutor(folder=tmp_path / "logs"), poll_s=0.2)
    lines = []
    ((key, result, lost),) = list(runner.run({"run": functools.partial(os._exit, 3)}, lines.append))
    assert key == "run" and result is None
    assert lost.startswith("job ") and "ended without a result" in lost and str(tmp_path / "logs") in lost
    assert lines[0].startswith("run: job ")


# ------------------------------------------------------------------------------- end to end
class Interrupted(Exception):
    """Stands for a kill during the second epoch."""


def train_one_of_two_epochs(plan, key: str, monkeypatch) -> list[dict]:
    """Train run ``key`` as its sweep would, stopped while saving epoch 2: its folder then holds
    epoch 1 (checkpoint, metrics, histories), as after a kill."""
    save = RunFolder.save_checkpoint

    def stop_at_epoch_2(folder, state):
        if state["epoch"] >= 2:
            raise Interrupted
        save(folder, state)

    with monkeypatch.context() as patch:
        patch.setattr(RunFolder, "save_checkpoint", stop_at_epoch_2)
        with pytest.raises(Interrupted):
            train(train_config(plan.parameters(key, resume=False)))
    folder = RunFolder(plan.run_dir(key))
    assert folder.state(plan.runs[key].config) == "partial" and folder.finished_epochs() == 1
    return folder.metrics()


def statuses(out: str, plan) -> dict[str, str]:
    """Run key -> status, from the summary table the command prints last."""
    rows = [line.split() for line in out.splitlines()]
    return {row[0]: row[1] for row in rows if row and row[0] in plan.runs}


@pytest.mark.slow
def test_a_tiny_sweep_runs_as_local_jobs_resumes_a_partial_run_then_skips(tmp_path, monkeypatch, capsys):
    config = write_yaml(tmp_path, SWEEPS)
    plan = make_sweep_plan(config)
    partial, fresh, broken = "tiny/embedding_size=4,seed=0", "tiny/seed=0", "tiny/seed=1"
    assert list(plan.runs) == [partial, fresh, broken]
    first_epoch = train_one_of_two_epochs(plan, partial, monkeypatch)

    args = ["--config", str(config), "--sweeps", "--threads", "1", "--executor", "local"]
    assert main(args) == 1  # the broken arm fails in its job, the others go on
    captured = capsys.readouterr()
    assert statuses(captured.out, plan) == {partial: "resumed", fresh: "trained", broken: "FAILED"}
    assert f"FAILED {broken}: " in captured.err and "figures.yaml" in captured.err
    assert captured.out.count(": job ") == 3  # each run one job
    for key in (partial, fresh):
        folder = RunFolder(plan.run_dir(key))
        assert folder.is_complete(plan.runs[key].config) and not (folder.path / "sweep.lock").exists()
        record = json.loads(folder.config_file.read_text())
        assert record["environment"]["kernels"]["setting"] == kernel_setting()  # the submitting process's
    rows = RunFolder(plan.run_dir(partial)).metrics()
    assert [row["epoch"] for row in rows] == [1, 2] and rows[0] == first_epoch[0]  # epoch 1 kept, not retrained
    logs = "".join(path.read_text() for path in (tmp_path / "runs" / "submitit").rglob("*_log.out"))
    assert "resuming after epoch 1 (2 epochs)" in logs and "training (2 epochs)" in logs
    size = (tmp_path / "figures" / "ablations" / "size.md").read_text()
    assert "| embedding_size=4 | 1 | " in size and "| embedding_size=8 | 1 | " in size
    assert "| broken | 0 |" in (tmp_path / "figures" / "ablations" / "broken.md").read_text()

    stamps = {p: p.stat().st_mtime_ns for key in (partial, fresh) for p in plan.run_dir(key).rglob("*") if p.is_file()}
    assert main(args[:3] + ["size", "--executor", "local"]) == 0
    out = capsys.readouterr().out
    assert out.count("complete, skipped") == 2 and ": job " not in out  # no job for a complete run
    assert statuses(out, plan) == {partial: "skipped", fresh: "skipped"}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
