"""Where the runs of a sweep train: in this process, or as submitit jobs on this machine or on Slurm.

``python -m dlde.pipeline --config figures.yaml --sweeps NAME --executor inline|local|slurm``:

* ``inline`` (the default): the runs train one after the other in this process's loop.
* ``local``: each run is a job of submitit's ``LocalExecutor``, a process of its own on this
  machine; ``os.cpu_count() // cpus_per_task`` of them at once.
* ``slurm``: each run is a Slurm job (submitit's ``SlurmExecutor``; ``sbatch`` must be on the
  PATH), all submitted at once; the cluster decides when each starts.

A job trains its run as the inline loop does (:func:`dlde.pipeline.sweeps.train_job` calls the
same per-run training): the same run folder, its ``sweep.lock``, a partial run resumed and a
complete one skipped, so inline, local and Slurm sweeps (several at once, too) share one runs
folder. The submitting process skips the complete runs without a job, submits the others, waits,
reports a job that ends without a result (killed, out of memory, over its time) as its run's
failure, and then writes the sweeps' tables as an inline sweep does.

Options: the ``slurm:`` section of figures.yaml (:class:`JobOptions`), each overridden by its
``--slurm-*`` flag. ``time`` and ``log_folder`` hold for ``local`` too. A run stopped at its
``time`` keeps its finished epochs and resumes when the command is run again.

Numeric kernels: a job's process is started by submitit (the local executor passes it this
process's environment; Slurm the environment ``sbatch`` exports) and imports torch and NumPy while
it unpickles its function, too late to pin OpenBLAS in that process. It computes nothing itself,
though: its run trains in a papermill kernel, a fresh process that inherits ``os.environ``. So the
job function first puts the submitting process's kernel setting into ``os.environ``
(:func:`job_environment`: the portable values of :mod:`dlde.kernels`, or ``native`` under
``--native-kernels``), and the kernel starts under it, as in the inline loop.

A job runs the submitting interpreter (``sys.executable``): on a cluster the checkout, its
``.venv``, ``runs_dir`` and the data must be on a filesystem the nodes share. docs/cluster.md has
the commands.
"""
from __future__ import annotations

import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import submitit

from dlde.kernels import SETTING_VARIABLE, portable_environment

from .plan import Plan, load_config

EXECUTORS = ("inline", "local", "slurm")
SECTION = "slurm"  # the key of figures.yaml
LOG_FOLDER = "submitit"  # under runs_dir when log_folder is not given


@dataclass(frozen=True)
class JobOptions:
    """What each job asks for: the ``slurm:`` section of figures.yaml, its ``--slurm-*`` flags.

    Attributes:
        partition: the Slurm partition (None: the cluster's default).
        time: minutes a job may run (Slurm's ``--time``; the local executor's timeout).
        cpus_per_task: cores of a job (Slurm's ``--cpus-per-task``); local: jobs at once is the
            machine's cores divided by it.
        mem: memory of a job as ``sbatch --mem`` takes it, e.g. ``"8G"`` (None: the default).
        log_folder: submitit's pickles and logs (``%j`` in it: the job id); relative to
            figures.yaml's folder (None: ``<runs_dir>/submitit``).
        sbatch: further ``#SBATCH`` options, e.g. ``{"account": "lab", "qos": "normal"}``.
    """

    partition: str | None = None
    time: int = 240
    cpus_per_task: int = 1
    mem: str | None = None
    log_folder: str | None = None
    sbatch: dict[str, Any] = field(default_factory=dict)


def job_options(section: Mapping[str, Any] | None, flags: Mapping[str, Any] | None = None, *,
                where: str = SECTION) -> JobOptions:
    """The options of a ``slurm:`` section, then of the flags that are not None.

    Raises:
        ValueError: an unknown key, or a value of the wrong kind (naming ``where``).
    """
    section = dict(section or {})
    known = [option.name for option in fields(JobOptions)]
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {known}")
    options = JobOptions(**section | {name: value for name, value in (flags or {}).items() if value is not None})
    for name in ("time", "cpus_per_task"):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {name} must be a positive whole number, not {value!r}")
    if not isinstance(options.sbatch, Mapping):
        raise ValueError(f"{where}: sbatch must map #SBATCH options to values, not {options.sbatch!r}")
    return options


def job_environment(kernels: str) -> dict[str, str]:
    """What a job puts into ``os.environ`` before it starts a kernel: the portable values of
    :mod:`dlde.kernels` when ``kernels`` (the submitting process's setting) is ``portable``,
    else only the ``native`` marker."""
    return portable_environment({}) if kernels == "portable" else {SETTING_VARIABLE: "native"}


@dataclass
class JobRunner:
    """A submitit executor and how its jobs are fed: at most ``at_once`` unfinished (None: all),
    their states polled every ``poll_s`` seconds."""

    executor: submitit.Executor
    at_once: int | None = None
    poll_s: float = 2.0

    def run(self, calls: Mapping[str, Callable[[], Any]], echo: Callable[[str], None],
            labels: Mapping[str, str] | None = None) -> Iterator[tuple[str, Any, str | None]]:
        """Submit each call as a job and yield ``(key, result, None)`` as each ends, or
        ``(key, None, why)`` (one line naming its log) for a job that ended without a result.
        ``echo`` gets a line per submitted job, naming it by its label (default: its key)."""
        waiting, running = deque(calls.items()), {}
        while waiting or running:
            while waiting and (self.at_once is None or len(running) < self.at_once):
                key, call = waiting.popleft()
                job = self.executor.submit(call)
                running[key] = job
                echo(f"{(labels or {}).get(key, key)}: job {job.job_id}, log {job.paths.stdout}")
            ended = [key for key, job in running.items() if job.done()]
            if not ended:
                time.sleep(self.poll_s)
            for key in ended:
                yield (key, *_result(running.pop(key)))


def _result(job: submitit.Job) -> tuple[Any, str | None]:
    """``(result, None)`` of an ended job, or ``(None, why)`` when it ended without one (killed,
    out of memory, over its time), one line naming its log."""
    try:
        return job.result(), None
    except Exception as error:
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        return None, f"job {job.job_id} ended without a result ({first}); see {job.paths.stderr}"


def make_executor(kind: str, figures: Plan, flags: Mapping[str, Any] | None = None) -> JobRunner | None:
    """The jobs of ``--executor kind`` (None for ``inline``), with the options of figures.yaml's
    ``slurm:`` section and ``flags`` (:func:`job_options`).

    Raises:
        ValueError: an unknown kind or option.
        RuntimeError: ``slurm`` where ``sbatch`` is not on the PATH.
    """
    if kind not in EXECUTORS:
        raise ValueError(f"--executor {kind!r}: one of {', '.join(EXECUTORS)}")
    options = job_options(load_config(figures.config).get(SECTION), flags, where=f"{figures.config}: {SECTION}")
    if kind == "inline":
        return None
    folder = figures.root / options.log_folder if options.log_folder else figures.runs_dir / LOG_FOLDER
    if kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=options.time)
        return JobRunner(executor, at_once=max(1, (os.cpu_count() or 1) // options.cpus_per_task))
    if shutil.which("sbatch") is None:
        raise RuntimeError("--executor slurm: sbatch is not on the PATH; submit from a Slurm login node, "
                           "or use --executor local")
    executor = submitit.SlurmExecutor(folder=folder)
    parameters = {"partition": options.partition, "time": options.time, "cpus_per_task": options.cpus_per_task,
                  "mem": options.mem, "additional_parameters": dict(options.sbatch) or None}
    executor.update_parameters(job_name="dlde-sweep",
                               **{name: value for name, value in parameters.items() if value is not None})
    return JobRunner(executor, poll_s=30.0)
