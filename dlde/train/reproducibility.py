"""What makes a run repeatable: seeding, the random-number state a checkpoint carries, and the
environment recorded beside the config."""
from __future__ import annotations

import functools
import os
import platform
import random
import re
import sys
import tempfile
from typing import Any, Mapping

import numpy as np
import torch

from dlde.kernels import kernels_record


def environment(device: torch.device, world_size: int = 1) -> dict[str, Any]:
    """What besides the config decides a run's numbers: recorded in ``config.json``.

    On the CPU the intra-op thread count changes how reductions are split, hence the last bits
    of a loss; the trainer sets it (``TrainConfig.threads``) and records the value used.
    ``world_size`` is the number of processes (the global batch is ``world_size * batch_size``).
    ``kernels`` is the numeric kernels' setting (:func:`dlde.kernels.kernels_record`: portable or
    native, and each variable) with the vector path PyTorch's own kernels took.
    """
    kernels = {**kernels_record(), "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "onednn_isa": onednn_isa()}
    return {"threads": torch.get_num_threads(), "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "device": str(device), "world_size": world_size,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark), "kernels": kernels}


@functools.cache
def onednn_isa() -> str | None:
    """The instruction set oneDNN (PyTorch's CPU convolutions) runs with in this process, as its
    verbose mode names it (``'Intel AVX2'``); None when PyTorch has no oneDNN.

    One small convolution runs with oneDNN's verbose output on while the process's standard output
    (file descriptor 1, where oneDNN prints) goes to a temporary file. oneDNN names its ISA once per
    process, so the answer is kept (None too when ``ONEDNN_VERBOSE`` printed it before).
    """
    if not torch.backends.mkldnn.is_available():
        return None
    images, weight = torch.zeros(2, 16, 32, 32), torch.zeros(16, 16, 3, 3)  # large enough for oneDNN's path
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as file:
        os.dup2(file.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                torch.nn.functional.conv2d(images, weight)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        file.seek(0)
        text = file.read().decode(errors="replace")
    found = re.search(r"onednn_verbose(?:,v1)?,info,cpu,isa:([^\n]+)", text)
    return found.group(1).strip() if found else None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global generators' state as plain data (tensors and ints: loads with ``weights_only``)."""
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_pos": random.getstate()[2], "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the global generators from :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
