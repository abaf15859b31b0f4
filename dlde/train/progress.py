"""A progress bar that cannot change a run's numbers."""
from __future__ import annotations

from typing import Any


class Progress:
    """A progress bar over a count of steps (never over a loader: a bar that iterates a loader
    calls ``iter(loader)`` itself, draws from its seeded generator and changes the shuffle).

    Does nothing when ``enabled`` is False, so progress on or off gives the same result.
    """

    def __init__(self, enabled: bool, total: int, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, leave=False)

    def step(self, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(**postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
