"""What the pipeline prints while it works: one line per finished epoch of a training run
(:class:`EpochProgress`, a thread polling the run's ``metrics.jsonl``) and the closing table of
every step with its outcome and time (:class:`Summary`)."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dlde.train import RunFolder

POLL_SECONDS = 1.0  # how often the progress thread reads a training run's metrics.jsonl


def duration(seconds: float) -> str:
    """``"41 s"``, ``"3 min 08 s"`` or ``"2 h 05 min"``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def echo_line(line: str) -> None:
    """The default ``echo`` of progress lines: print and flush."""
    print(line, flush=True)


class EpochProgress:
    """Prints one line per epoch a training run finishes, read from its ``metrics.jsonl``.

    A background thread polls the file; a line reads
    ``  dlde: epoch 3/16, train loss 0.4123, val loss 0.3011, AP 0.512; 41 s elapsed, about 3 min 38 s left``.
    Only a file written after the watch started counts (an old run's file is not reported),
    and epochs up to ``done_before`` (a resumed run's) are not reported again.

    Use as a context manager around the notebook's execution.
    """

    def __init__(self, run_dir: Path, epochs: int, label: str, *, done_before: int = 0,
                 interval: float = POLL_SECONDS, echo: Callable[[str], None] | None = None):
        self.folder = RunFolder(run_dir)
        self.epochs, self.label, self.done_before, self.interval = epochs, label, done_before, interval
        self.echo = echo or echo_line
        self.reported = done_before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._started = 0.0
        self._started_ns = 0

    def __enter__(self) -> EpochProgress:
        self._started, self._started_ns = time.perf_counter(), time.time_ns()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()  # the last epoch, if it landed between two polls

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        """Report every epoch written since the last poll."""
        try:
            if self.folder.metrics_file.stat().st_mtime_ns < self._started_ns:
                return
            rows = self.folder.metrics()
        except (OSError, ValueError):  # not written yet, or unreadable
            return
        for row in rows:
            epoch = int(row.get("epoch", 0))
            if epoch <= self.reported:
                continue
            self.reported = epoch
            elapsed = time.perf_counter() - self._started
            left = elapsed / max(1, epoch - self.done_before) * (self.epochs - epoch)
            parts = [f"epoch {epoch}/{self.epochs}"]
            for key, title, digits in (("train_loss", "train loss", 4), ("val_loss", "val loss", 4), ("AP", "AP", 3)):
                if row.get(key) is not None:
                    parts.append(f"{title} {row[key]:.{digits}f}")
            self.echo(f"  {self.label}: {', '.join(parts)}; {duration(elapsed)} elapsed, "
                      f"about {duration(left)} left")


@dataclass
class Summary:
    """The steps of one pipeline invocation with their outcome and time, printed at the end."""

    rows: list[tuple[str, str, float]] = field(default_factory=list)  # (step, status, seconds)

    def add(self, step: str, status: str, seconds: float) -> None:
        self.rows.append((step, status, seconds))

    def table(self) -> str:
        """An aligned plain-text table (one line per step, then the total)."""
        if not self.rows:
            return "no steps"
        width = max(len("step"), *(len(r[0]) for r in self.rows))
        status_width = max(len("status"), *(len(r[1]) for r in self.rows))
        lines = [f"{'step':<{width}}  {'status':<{status_width}}  time",
                 f"{'-' * width}  {'-' * status_width}  ----"]
        lines += [f"{step:<{width}}  {status:<{status_width}}  {duration(seconds)}"
                  for step, status, seconds in self.rows]
        lines.append(f"{'total':<{width}}  {'':<{status_width}}  {duration(sum(r[2] for r in self.rows))}")
        return "\n".join(lines)
