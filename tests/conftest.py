import importlib.util
import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")


def _pin_kernels() -> None:
    """The portable numeric kernels (dlde/kernels.py) in this process before torch and NumPy load, as
    every entry point has them: the tests compare numbers with the processes those entry points start.
    The module is loaded from its file because importing the package would load torch first."""
    spec = importlib.util.spec_from_file_location("_dlde_kernels", Path(__file__).parents[1] / "dlde" / "kernels.py")
    kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernels)
    os.environ.update(kernels.portable_environment())


_pin_kernels()

import pytest  # noqa: E402 - after the pin
import torch  # noqa: E402 - after the pin

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the tests in several processes (pytest-xdist): one torch thread each, or
    # their threads would compete for the same cores. The processes a test starts set their own.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


