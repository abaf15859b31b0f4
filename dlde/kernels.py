"""Portable numeric kernels: one instruction set for every process that computes a number.

The float32 kernels of PyTorch, NumPy, numba and faiss pick their code path by the CPU's
instruction set, and the paths round differently: one training step of the digits DLDENet gives
loss 3.3028059006 with oneDNN's AVX-512 convolutions and 3.3028054237 with its AVX2 ones on the
same AMD EPYC, and after 16 epochs the AP differs in the third digit. Pinning each library to a
level every current x86-64 server has (:data:`PORTABLE_KERNELS`, AVX2) makes the numbers of a run
depend on the code and the seed, not on the machine's CPU generation.

The variables must be set before the libraries load (OpenBLAS reads its own when NumPy is
imported, numba when it is imported), so the entry points that compute numbers
(``python -m dlde.train``, ``python -m dlde.pipeline``, the benchmark scripts) call
:func:`pin_this_process` first: when the environment does not hold the pin it re-executes the
same command with it. Every process they start (papermill kernels, torchrun workers) inherits
the environment. ``--native-kernels`` turns the pin off (each library then takes the CPU's best
path, and whatever the shell set); :data:`SETTING_VARIABLE` tells child processes which was chosen.

This module imports nothing but the standard library, so it can run before torch and NumPy.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, MutableMapping, Sequence

#: Variable -> value of the portable setting. Each library reads its variable at load time (or at
#: its first kernel) and caps its code path there.
PORTABLE_KERNELS: dict[str, str] = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN: PyTorch's CPU convolutions
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's own vectorized kernels (reductions, activations)
    "MKL_CBWR": "AVX2",  # MKL (PyTorch's matrix products): conditional numerical reproducibility
    "OPENBLAS_CORETYPE": "Haswell",  # OpenBLAS of NumPy, SciPy and scikit-learn (the AVX2 kernels)
    "NUMBA_CPU_NAME": "generic",  # numba (umap-learn, pynndescent): code for a generic x86-64
    "FAISS_OPT_LEVEL": "avx2",  # faiss's SIMD level (the retrieval index)
}
#: Set by :func:`pin_this_process` to ``portable`` or ``native``; child processes keep the choice.
SETTING_VARIABLE = "DLDE_KERNELS"
#: The flag of the entry points that turns the pin off.
NATIVE_FLAG = "--native-kernels"
SETTINGS = ("portable", "native")


def is_pinned(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``environ`` (default ``os.environ``) holds every value of :data:`PORTABLE_KERNELS`."""
    environ = os.environ if environ is None else environ
    return all(environ.get(name) == value for name, value in PORTABLE_KERNELS.items())


def portable_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default ``os.environ``) with the portable setting: the values of
    :data:`PORTABLE_KERNELS` replace whatever the shell set, and :data:`SETTING_VARIABLE` says so."""
    environ = dict(os.environ if environ is None else environ)
    return {**environ, **PORTABLE_KERNELS, SETTING_VARIABLE: "portable"}


def kernels_record(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """What a run records of its kernels (``config.json`` and the table provenance): the setting
    (``portable`` when every pinned value is in place, else ``native``) and the value of each
    variable (None when unset)."""
    environ = os.environ if environ is None else environ
    return {"setting": "portable" if is_pinned(environ) else "native",
            **{name: environ.get(name) for name in PORTABLE_KERNELS}}


def setting(environ: Mapping[str, str] | None = None) -> str:
    """``'portable'`` or ``'native'``: :func:`kernels_record`'s setting."""
    return str(kernels_record(environ)["setting"])


def wants_native(argv: Sequence[str]) -> bool:
    """Whether the command line asks for the native kernels (:data:`NATIVE_FLAG`)."""
    return NATIVE_FLAG in argv


def pin_this_process(argv: Sequence[str] | None = None, *, module: str | None = None,
                     environ: MutableMapping[str, str] | None = None, execv=os.execv) -> None:
    """Give this command the portable kernels, before it computes anything.

    When ``argv`` (default ``sys.argv[1:]``) has :data:`NATIVE_FLAG`, or the environment already
    holds the pin, only :data:`SETTING_VARIABLE` is set (children keep the choice). Otherwise the
    command is executed again, in this process (same pid), with :func:`portable_environment`:
    ``python -m <module> argv`` for a module, ``python <script> argv`` for a script
    (``sys.argv[0]``). Libraries loaded before the call are of no concern: the new image loads
    them afresh with the pin in place.

    Args:
        argv: the command's arguments (without the program).
        module: the dotted module run with ``-m`` (None: the script ``sys.argv[0]``).
        environ: the environment to read and update (default ``os.environ``).
        execv: replaces the process (a test passes a recorder).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    if wants_native(argv):
        environ[SETTING_VARIABLE] = "native"
        return
    if environ.get(SETTING_VARIABLE) == "native" and not is_pinned(environ):
        return  # started by a command run with --native-kernels: keep its choice
    if is_pinned(environ):
        environ[SETTING_VARIABLE] = "portable"
        return
    environ.update(portable_environment(environ))
    program = ["-m", module] if module is not None else [os.path.abspath(sys.argv[0])]
    sys.stdout.flush()
    sys.stderr.flush()
    execv(sys.executable, [sys.executable, *program, *argv])


def pin_script() -> None:
    """:func:`pin_this_process` for a script (``python benchmarks/x.py ...``), then
    :data:`NATIVE_FLAG` is taken out of ``sys.argv`` so the script's own parser never sees it."""
    pin_this_process()
    sys.argv[1:] = [word for word in sys.argv[1:] if word != NATIVE_FLAG]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dlde.kernels [--native-kernels] [COMMAND ...]``: run ``COMMAND`` with the
    portable kernels (``make lab`` starts JupyterLab so, and its kernels inherit them), or print
    this process's setting as JSON when no command is given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    native = wants_native(argv)
    command = [word for word in argv if word != NATIVE_FLAG]
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print(json.dumps(kernels_record(), indent=1))
        return 0
    environ = {**os.environ, SETTING_VARIABLE: "native"} if native else portable_environment()
    os.execvpe(command[0], command, environ)
    return 0  # not reached: the command replaced this process


if __name__ == "__main__":
    sys.exit(main())
