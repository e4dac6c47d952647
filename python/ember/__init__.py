"""ember: train neural networks (MLPs) on fused C++/CUDA kernels.

The kernels are also a drop-in backend for NumPy (and CuPy) code: see :mod:`ember.ops`.

Example:
    >>> import ember
    >>> from ember.nn import MLP
    >>> x, y = ember.datasets.load_digits()
    >>> trainer = ember.Trainer(MLP([64, 256, 256, 10]), optimizer="adam", lr=1e-3)
    >>> history = trainer.fit(x, y, epochs=5, validation_split=0.2, verbose=0)
"""
from ember.errors import CheckpointError, CudaError  # first: ember._cuda looks CudaError up
from ember import backend, ops
from ember.backend import cuda_available, get_num_threads, info, set_num_threads
from ember import callbacks, data, datasets, losses, nn, optim, preprocessing, schedules
from ember.trainer import History, Trainer
from ember import checkpoint
from ember.checkpoint import load_model, load_trainer, save_model
# ModelCheckpoint lives in ember.checkpoint (above ember.callbacks, which it builds on) and is
# importable from ember.callbacks too, as in Keras: set here, so callbacks imports nothing above it.
callbacks.ModelCheckpoint = checkpoint.ModelCheckpoint

__version__ = "0.1.0"

__all__ = [
    "__version__", "backend", "ops", "info", "set_num_threads", "get_num_threads",
    "cuda_available", "CudaError", "CheckpointError", "nn", "losses", "optim", "schedules",
    "data", "datasets", "callbacks", "Trainer", "History", "checkpoint", "load_model",
    "load_trainer", "save_model", "preprocessing",
]
