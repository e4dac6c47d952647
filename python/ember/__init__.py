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
from ember import data, datasets, losses, metrics, nn, optim, preprocessing, schedules
from ember import checkpoint
from ember.checkpoint import load_model, save_model
from ember import inference
from ember.inference import Predictor, load_predictor
from ember import callbacks, train
from ember.train import History, Trainer, load_trainer
from ember import trainer
from ember import export
from ember._version import __version__
# ember.checkpoint is the file format and imports nothing above it; the callback and the
# function that build on it are importable from there too, as before (ModelCheckpoint lives in
# ember.callbacks, load_trainer in ember.train).
checkpoint.ModelCheckpoint = callbacks.ModelCheckpoint
checkpoint.load_trainer = load_trainer

__all__ = [
    "__version__", "backend", "ops", "info", "set_num_threads", "get_num_threads",
    "cuda_available", "CudaError", "CheckpointError", "nn", "losses", "optim", "schedules",
    "data", "datasets", "callbacks", "train", "Trainer", "History", "checkpoint", "load_model",
    "load_trainer", "save_model", "preprocessing", "metrics", "export", "inference", "Predictor",
    "load_predictor",
]
