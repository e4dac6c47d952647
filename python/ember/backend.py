"""Which backends were built and are usable here; device selection; NumPy/CuPy helpers.

>>> import ember
>>> ember.info()["backends"]["cpu"]["usable"]
True
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np

from ember import _cpu, _validate
from ember._version import __version__

#: What to tell a user whose ember has no CUDA module: the default build compiles it only where
#: nvcc and a GPU are found at install time.
NOT_BUILT_WITH_CUDA = (
    "ember was built without CUDA (the default build compiles the CUDA module only when nvcc and "
    "an NVIDIA GPU are found at install time; to build it anyway: "
    "pip install . -C cmake.define.EMBER_CUDA=ON)")


def _import_cuda():
    """``(ember._cuda or None, why it is missing)``: a module that was never built is told apart
    from one that was built but does not load (a missing CUDA runtime library, say)."""
    if importlib.util.find_spec("ember._cuda") is None:
        return None, NOT_BUILT_WITH_CUDA
    try:
        from ember import _cuda as module
    except ImportError as exc:  # pragma: no cover - depends on the machine
        return None, f"ember's CUDA module was built but does not load: {exc}"
    return module, ""


_cuda, _CUDA_IMPORT_ERROR = _import_cuda()


def cuda_module():
    """The compiled CUDA module ``ember._cuda``; ImportError saying why when it is missing."""
    if _cuda is None:
        # Not built: ModuleNotFoundError (what a missing module raises); built but not loadable:
        # ImportError.
        cls = ModuleNotFoundError if _CUDA_IMPORT_ERROR == NOT_BUILT_WITH_CUDA else ImportError
        raise cls(_CUDA_IMPORT_ERROR, name="ember._cuda")
    return _cuda

__all__ = [
    "info", "cuda_built", "cuda_available", "cuda_training_available", "set_num_threads", "get_num_threads",
    "resolve_device", "resolve_training_device", "is_cuda_array", "to_host", "array_module",
    "cuda_module",
    "NOT_BUILT_WITH_CUDA",
    "GPU_TRAINING_VERIFIED",
]

#: Whether ``Trainer(device="auto")`` may pick the GPU. True since the GPU training tests
#: (tests/test_gpu_training.py, CUDA-graph steps included) passed on an H200 in
#: ``bench/gpu_check.sh`` (bench/results/gpu-2026-11-27-h200.md); set it to False to keep
#: ``"auto"`` on the CPU.
GPU_TRAINING_VERIFIED = True

_cuda_state: tuple[int, str] | None = None


def cuda_built() -> bool:
    """True when the CUDA module (ember._cuda) was compiled into this install."""
    return _cuda is not None


def _cuda_devices() -> tuple[int, str]:
    global _cuda_state
    if _cuda_state is None:
        if _cuda is None:
            _cuda_state = (0, _CUDA_IMPORT_ERROR)
        else:
            n, why = _cuda.device_count()
            if n > 0:
                try:
                    import cupy  # noqa: F401  (only whether it imports)
                except ImportError:
                    n, why = 0, "CuPy is not installed (pip install cupy-cuda13x)"
            _cuda_state = (n, why)
    return _cuda_state


def cuda_available() -> bool:
    """True when a CUDA device, the CUDA module and CuPy are all present."""
    return _cuda_devices()[0] > 0


def cuda_training_available() -> tuple[bool, str]:
    """Whether ``Trainer`` can train on the GPU. Returns ``(ok, reason)``.

    True whenever CUDA is usable (:func:`cuda_available`): batches, parameters, gradients and
    optimizer state then live on the device as CuPy arrays. ``device="auto"`` picks the GPU only
    once :data:`GPU_TRAINING_VERIFIED` is set (see :func:`resolve_training_device`).
    """
    if not cuda_available():
        return False, _cuda_devices()[1]
    if GPU_TRAINING_VERIFIED:
        return True, ""
    return True, ("the GPU training loop has not been verified on a GPU yet: device='auto' "
                  "trains on the CPU, device='cuda' on the GPU")


def set_num_threads(n: int) -> None:
    """Set the number of threads every CPU kernel uses (ember's thread pool).

    Raises:
        ValueError: if ``n`` is not an integer in ``[1, max_num_threads()]``.
    """
    n = _validate.int_at_least("set_num_threads", "n", n, 1)
    limit = max_num_threads()
    if n > limit:
        # More threads than this only add contention (and each is a real OS thread to start).
        raise ValueError(f"set_num_threads: n must be at most {limit} (4 threads per core of the "
                         f"{os.cpu_count() or 1} this machine has, or 256), got {n}")
    _cpu.set_num_threads(n)


def max_num_threads() -> int:
    """The most threads :func:`set_num_threads` accepts: ``max(256, 4 * os.cpu_count())``. More
    than one thread per core only adds contention for these kernels."""
    return max(256, 4 * (os.cpu_count() or 1))


def get_num_threads() -> int:
    """Number of threads the CPU kernels use."""
    return _cpu.get_num_threads()


def info() -> dict[str, Any]:
    """Version, backends built and usable, devices and threads, as a dict."""
    n, why = _cuda_devices()
    cuda: dict[str, Any] = {"built": cuda_built(), "usable": n > 0, "devices": []}
    if _cuda is not None:
        cuda["runtime_version"] = _cuda.runtime_version()
        cuda["driver_version"] = _cuda.driver_version()
        for i in range(n):
            cuda["devices"].append(_cuda.device_info(i))
    if n == 0:
        cuda["reason"] = why
    return {
        "version": __version__,
        "backends": {
            "cpu": {"built": True, "usable": True, "isa": _cpu.isa(),
                    "threads": _cpu.get_num_threads()},
            "cuda": cuda,
        },
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
    }


def resolve_device(device: str) -> str:
    """Map ``"auto" | "cpu" | "cuda"`` to ``"cpu"`` or ``"cuda"``.

    Raises:
        ValueError: for an unknown name, or ``"cuda"`` when no usable GPU is present (the
            message says why).
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if device == "cuda":
        raise ValueError(f"device='cuda' requested but CUDA is not usable: {_cuda_devices()[1]}")
    return "cpu"


def resolve_training_device(device: str) -> str:
    """Where ``Trainer`` trains: :func:`resolve_device`, except that ``"auto"`` stays on the CPU
    until :data:`GPU_TRAINING_VERIFIED` (an explicit ``"cuda"`` always trains on the GPU).

    Raises:
        ValueError: as :func:`resolve_device`.
    """
    resolved = resolve_device(device)
    if resolved == "cuda" and device == "auto" and not GPU_TRAINING_VERIFIED:
        return "cpu"
    return resolved


def is_cuda_array(x: Any) -> bool:
    """True for arrays that live on a GPU (expose ``__cuda_array_interface__``)."""
    return hasattr(x, "__cuda_array_interface__")


def to_host(a):
    """``a`` on the host: a CuPy array copied back (``a.get()``), anything else as it is."""
    return a.get() if hasattr(a, "get") else a


def array_module(where):
    """The array module (``numpy`` or ``cupy``) for ``where``: a device name (``"cpu"`` or
    ``"cuda"``) or an array (NumPy arrays, subclasses such as a memmap included, give numpy;
    anything else, a CuPy array, gives cupy)."""
    if isinstance(where, str):
        if where != "cuda":
            return np
    elif isinstance(where, np.ndarray):
        return np
    import cupy
    return cupy
