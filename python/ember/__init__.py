"""ember: train neural networks (MLPs) on fused C++/CUDA kernels.

The kernels are also a drop-in backend for NumPy (and CuPy) code: see :mod:`ember.ops`.
"""
from ember.errors import CheckpointError, CudaError  # first: ember._cuda looks CudaError up
from ember import backend, ops
from ember.backend import cuda_available, get_num_threads, info, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "__version__", "backend", "ops", "info", "set_num_threads", "get_num_threads",
    "cuda_available", "CudaError", "CheckpointError",
]
