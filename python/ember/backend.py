"""Which backends were built and are usable here; device selection; NumPy/CuPy helpers.

>>> import ember
>>> ember.info()["backends"]["cpu"]["usable"]
True
"""
from __future__ import annotations

import importlib.util
import os
import sys
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
    "cuda_module", "cuda_unusable_reason", "is_foreign_array", "dlpack_on_cuda", "as_kernel_array",
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


def cuda_unusable_reason() -> str:
    """Why CUDA is not usable here ("" when it is: :func:`cuda_available`)."""
    return _cuda_devices()[1] if not cuda_available() else ""


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


#: The libraries whose arrays ``ember.ops`` gives its results back in (see as_kernel_array); their
#: CUDA arrays are converted too, so that the kernels run on the library's current stream.
_CALLER_TYPED = ("torch", "jax", "jaxlib")


def _library(x: Any) -> str:
    return type(x).__module__.partition(".")[0]


def is_foreign_array(x: Any) -> bool:
    """True for an array that ``ember.ops`` converts at its entry (:func:`as_kernel_array`): an
    object exposing ``__dlpack__`` that is neither a NumPy array nor a CUDA array the CUDA
    kernels take as it is (CuPy's, or another ``__cuda_array_interface__`` array). PyTorch
    tensors and JAX arrays are foreign on either device."""
    if isinstance(x, np.ndarray) or not hasattr(x, "__dlpack__"):
        return False
    # (the library first: a CUDA tensor that requires grad raises on __cuda_array_interface__)
    return _library(x) in _CALLER_TYPED or not is_cuda_array(x)


def dlpack_on_cuda(x: Any) -> bool:
    """Whether a ``__dlpack__`` object lives in GPU memory (DLPack's kDLCUDA or
    kDLCUDAManaged)."""
    if _library(x) == "torch":
        return x.is_cuda  # (__dlpack_device__ costs a PyTorch tensor ~4 us)
    return int(x.__dlpack_device__()[0]) in (2, 13)


def _torch_from_array(a):
    """``torch.from_dlpack(a)``; for a NumPy array ``torch.from_numpy``, the same zero-copy
    tensor in a third of the time."""
    import torch
    return torch.from_numpy(a) if type(a) is np.ndarray else torch.from_dlpack(a)


def _wrap_back(library: str):
    """The from_dlpack of ``library``, which its array's presence says is imported already."""
    if library == "torch":
        return _torch_from_array
    if library in ("jax", "jaxlib"):
        return sys.modules["jax"].dlpack.from_dlpack
    return None


def as_kernel_array(x: Any):
    """``(array, wrap_back)``: ``x`` as an array the kernels take, sharing its memory (no copy),
    and the function that gives a result array back in ``x``'s library (``torch.from_dlpack``
    (``torch.from_numpy`` for a NumPy result), ``jax.dlpack.from_dlpack``; None: results stay NumPy or CuPy arrays).

    A foreign array (:func:`is_foreign_array`) in host memory becomes a NumPy view
    (``np.from_dlpack``: read-only for a JAX array; ``Tensor.numpy()``, the same view, for a
    PyTorch tensor), one in GPU memory a CuPy array (``cupy.from_dlpack``). A PyTorch tensor that requires grad is detached first: the kernels
    record no autograd. Anything else (NumPy and CuPy arrays included) comes back as it is, with
    None.
    """
    if type(x) is np.ndarray:
        return x, None
    library = _library(x)
    if library == "torch":
        if x.requires_grad:
            x = x.detach()
        # x.numpy(): the view np.from_dlpack gives, in a quarter of the time
        return (_cupy_from_dlpack(x) if x.is_cuda else x.numpy()), _torch_from_array
    if not is_foreign_array(x):
        return x, None
    if not dlpack_on_cuda(x):
        return np.from_dlpack(x), _wrap_back(library)
    array = _cupy_from_dlpack(x)
    if library in ("jax", "jaxlib"):  # immutable: CuPy has no read-only flag, the interface has
        array = _ReadOnlyCuda(array)
    return array, _wrap_back(library)


class _ReadOnlyCuda:
    """A CuPy array that ``__cuda_array_interface__`` says is read-only (the memory of a JAX
    array, which the kernels must refuse as an output); its other attributes are the array's."""

    def __init__(self, array: Any):
        self._array = array
        iface = dict(array.__cuda_array_interface__)
        iface["data"] = (iface["data"][0], True)
        self.__cuda_array_interface__ = iface

    def __getattr__(self, name: str):
        return getattr(self._array, name)


def _cupy_from_dlpack(x: Any):
    import cupy
    return cupy.from_dlpack(x)


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
