"""``ember train`` on several processes: ``--processes N`` starts ``mpiexec -n N`` on the same
command (:func:`launch`), and a run trained by several ranks is written by rank 0 alone
(:func:`on_rank0`: the others take its result, or its error)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

from ember import distributed
from ember.cli.options import UsageError

__all__ = ["mpiexec", "strip_processes", "launch", "on_rank0"]


def mpiexec() -> Optional[str]:
    """The ``mpiexec`` beside this Python (the ``mpich`` wheel installs it there), else on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("mpiexec")


def strip_processes(argv: list) -> list:
    """``argv`` without its ``--processes N`` / ``--processes=N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--processes":
            skip = True
        elif not a.startswith("--processes="):
            out.append(a)
    return out


def launch(argv: list, n: int) -> int:
    """Run ``ember <argv>`` (``argv`` without ``--processes``) on ``n`` processes with
    ``mpiexec -n n``; returns its exit status (130 when interrupted)."""
    exe = mpiexec()
    if exe is None:
        raise UsageError('--processes needs an MPI launcher (mpiexec): pip install "ember[mpi]" '
                         "(mpi4py and the mpich wheel)")
    if importlib.util.find_spec("mpi4py") is None:  # each rank needs it: say so before
        raise UsageError(f"--processes: {distributed.MISSING_MPI}")
    cmd = [exe, "-n", str(n), sys.executable, "-m", "ember", *strip_processes(argv)]
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # mpiexec passes the signal on to the ranks
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        print("\nember: interrupted; the run is resumable: run the same command with --resume",
              file=sys.stderr, flush=True)
        return 130


def on_rank0(world, fn: Callable):
    """``fn()`` on rank 0, its result (or the exception it raised) on every rank: what only one
    process may do (create the run folder, write its files) without the others waiting forever
    when it fails. Alone (``world`` None): ``fn()``."""
    if world is None:
        return fn()
    outcome = None
    if world.rank == 0:
        try:
            outcome = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - handed to every rank, raised there
            outcome = ("error", exc)
    outcome = world.bcast(outcome)
    if outcome[0] == "error":
        raise outcome[1]
    return outcome[1]
