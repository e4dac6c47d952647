"""Inference with frozen weights: :class:`Predictor` and :func:`load_predictor`.

Training happens once; prediction every time a program asks. A Predictor holds a snapshot of a
model's weights and answers ``predict`` / ``predict_proba`` / ``__call__`` (the raw outputs) with
no Trainer, no optimizer state and no per-call packing:

- a stack of :class:`ember.nn.Linear` layers with their activations (an MLP, or a run's
  :class:`ember.preprocessing.RunModel`: the standardization is folded in) is compiled into one
  C++ call, :data:`ember.ops.ForwardPlan`: the weights are copied once, packed the way the GEMM
  reads them, and a call streams them (batch 1 is a matrix-vector product at cache speed, not a
  repacking of the weights). The outputs are the bits the layer-by-layer forward gives;
- any other model runs its own eval-mode ``forward`` on a private copy, one call at a time;
- CuPy input runs on the GPU (a copy of the model there, made on first use) and gives CuPy out;
  NumPy in gives NumPy out.

Every call may come from any thread: the compiled plan takes a workspace of its own per call
(workspaces are kept per block size and reused), the other paths hold a lock.
:meth:`ember.Trainer.predict` and ``ember predict`` go through this class.
"""
from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from ember import _validate, checkpoint, nn, ops
from ember import preprocessing as pre
from ember._io import as_path
from ember.backend import array_module, is_cuda_array, to_host
from ember.data import check_xy
from ember.errors import CheckpointError
from ember.losses import get_loss

TASKS = ("classification", "regression")


def _plan_for(network, standardize, block_rows: int):
    """The compiled forward of ``network`` (behind ``standardize``), or None when it is not a
    Linear stack :meth:`ember.nn.Sequential.frozen_layers` can describe."""
    if not isinstance(network, nn.Sequential):
        return None
    spec = network.frozen_layers()
    if spec is None:
        return None
    weights = [np.ascontiguousarray(to_host(lin.weight.data), dtype=np.float32)
               for lin, _, _ in spec]
    biases = [None if lin.bias is None else
              np.ascontiguousarray(to_host(lin.bias.data), dtype=np.float32)
              for lin, _, _ in spec]
    mean = std = None
    if standardize is not None:
        mean, std = (np.ascontiguousarray(a, dtype=np.float32) for a in
                     (standardize.mean, standardize.std))
    return ops.ForwardPlan(spec[0][0].in_features, weights, biases, [a for _, a, _ in spec],
                           [s for _, _, s in spec], mean, std, block_rows)


class Predictor:
    """A model's forward pass with frozen weights, for serving.

    Args:
        model: an :class:`ember.nn.Module` (e.g. an MLP, or what :func:`ember.load_model`
            returns). Its weights are copied: later changes to ``model`` do not reach the
            predictor (build a new one).
        task: ``"classification"`` (``predict`` gives class indices, ``predict_proba``
            probabilities), ``"regression"`` (``predict`` gives the values), or None: a run's
            RunModel knows its own (classes: classification), otherwise ``predict`` gives the
            outputs and ``predict_proba`` is refused.
        block_rows: rows computed per block (memory: block_rows x the widest layer, per
            concurrent call); it changes no result.
        copy: False shares ``model`` instead of copying it (what :class:`ember.Trainer` does
            for its own model: the compiled path copies the weights anyway).

    Raises:
        TypeError / ValueError: ``model`` is not an ember Module, or a bad ``task`` or
            ``block_rows``.
    """

    def __init__(self, model, *, task: Optional[str] = None, block_rows: int = 512,
                 copy: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"Predictor: model must be an ember.nn.Module, got "
                            f"{type(model).__name__}")
        if task is not None:
            _validate.one_of("Predictor", "task", task, TASKS)
        self.block_rows = _validate.positive_int("Predictor", "block_rows", block_rows)
        run = model if isinstance(model, pre.RunModel) else None
        self.classes = None if run is None else run.classes
        if task is None and run is not None:
            task = ("classification" if run.classes is not None else
                    "regression" if run.rescale is not None else None)
        self.task = task
        self.in_features, self.out_features = _widths(model)
        self._rescale = None if run is None else run.rescale
        # The model itself serves the paths the plan does not (another model, CuPy input): a
        # snapshot too, unless shared on purpose.
        self._model = _copy(model) if copy else model
        self._copy = copy
        self._lock = threading.Lock()
        self._gpu = None  # the model on the GPU, for CuPy input (made on first use)
        self._plan = None
        # A model on the GPU is compiled for the CPU on the first NumPy input (its weights are
        # copied to the host then); one on the CPU now.
        self._compiled = model.device != "cpu"
        if not self._compiled:
            self._compile()

    def _compile(self):
        model = self._model
        run = model if isinstance(model, pre.RunModel) else None
        network = model if run is None else run.network
        self._plan = _plan_for(network, None if run is None else run.standardize,
                               self.block_rows)
        self._compiled = True

    # -- the three calls ------------------------------------------------------------------
    def __call__(self, x):
        """The model's outputs (logits for a classifier; a run's regression values in the
        target's units) for the rows of ``x``: NumPy in, NumPy out; CuPy in, CuPy out.

        Raises:
            TypeError / ValueError: ``x`` is not a 2-D array of real numbers with
                ``in_features`` columns, is empty, or holds NaN or Inf (the message names it).
        """
        if type(x) is not np.ndarray and is_cuda_array(x):
            return self._on_gpu(x)
        if not self._compiled:
            with self._lock:
                if not self._compiled:
                    self._compile()
        if type(x) is np.ndarray and self._plan is not None and x.dtype == np.float32 and \
                x.ndim == 2 and x.flags.c_contiguous:
            out = self._plan.run(x)  # checks the width and the values itself
        else:
            x, _ = check_xy(x, None, n_features=self.in_features, where="predict")
            if self._plan is None:
                return self._eval_forward(x)
            out = self._plan.run(x)
        if self._rescale is not None:
            out = self._rescale.forward(out)
        return out

    def predict(self, x):
        """Class indices (int64; a run's labels are ``self.classes[index]``) for a classifier,
        the predicted values otherwise (1-D for a single output)."""
        out = self(x)
        if self.task == "classification":
            return ops.argmax(out)
        return out[:, 0] if out.shape[1] == 1 else out

    def predict_proba(self, x):
        """Class probabilities (the softmax of the logits, computed in float64, returned as
        float32 rows that sum to 1).

        Raises:
            ValueError: the model is not a classifier.
        """
        if self.task != "classification":
            raise ValueError("predict_proba: the model is not a classifier "
                             f"(task {self.task!r}); pass task='classification' if it is one")
        z = self(x)
        xp = array_module(z)
        z = z.astype(xp.float64)
        z -= z.max(axis=1, keepdims=True)
        xp.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z.astype(xp.float32)

    # -- the other paths ------------------------------------------------------------------
    def _blocks(self, model, x):
        """``model``'s eval forward of ``x`` in blocks of ``block_rows``; the caller holds the
        lock. The model's mode is put back after."""
        was_training = model.training
        model.eval()
        try:
            outs = [model.forward(x[i:i + self.block_rows])
                    for i in range(0, len(x), self.block_rows)]
        finally:
            model.train(was_training)
        return outs[0] if len(outs) == 1 else array_module(outs[0]).concatenate(outs)

    def _eval_forward(self, x):
        """The model's own eval forward (a NumPy result), one call at a time."""
        model = self._model
        if model.device == "cuda":
            x = array_module("cuda").asarray(x)
        with self._lock:
            return to_host(self._blocks(model, x))

    def _on_gpu(self, x):
        xp = array_module(x)
        shape = tuple(x.shape)
        if len(shape) != 2 or shape[1] != self.in_features or shape[0] == 0:
            raise ValueError(f"predict: x must be 2-D with {self.in_features} columns and at "
                             f"least one row, got shape {shape}")
        if x.dtype.kind not in "biuf":
            raise TypeError(f"predict: x must hold real numbers, got dtype {x.dtype}")
        x = xp.ascontiguousarray(x, dtype=xp.float32)
        if not bool(xp.isfinite(x).all()):
            raise ValueError("predict: x holds NaN or Inf")
        with self._lock:
            if self._gpu is None:
                model = self._model
                self._gpu = (model if model.device == "cuda" and not self._copy
                             else _copy(model).to("cuda"))
                self._gpu.eval()
            return self._blocks(self._gpu, x)

    def __getstate__(self):
        # A pickle (joblib, multiprocessing) carries the model; the compiled plan, the lock and
        # the GPU copy are made again where it is loaded (the plan on the first NumPy call).
        state = self.__dict__.copy()
        for key in ("_lock", "_plan", "_gpu"):
            state.pop(key, None)
        state["_compiled"] = False
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._plan = None
        self._gpu = None

    def __repr__(self) -> str:
        how = "compiled" if self._plan is not None else "eval forward"
        return (f"Predictor({self.in_features} -> {self.out_features}, task={self.task!r}, "
                f"{how})")


def _copy(model):
    """A private copy of ``model`` (buffers and fit settings are not copied)."""
    return copy.deepcopy(model)


def _widths(model) -> tuple[Optional[int], Optional[int]]:
    """(input, output) widths of the model when its Linear layers tell them."""
    net = model.network if isinstance(model, pre.RunModel) else model
    lins = [m for m in getattr(net, "layers", ()) if isinstance(m, nn.Linear)]
    if not lins:
        return None, None
    return lins[0].in_features, lins[-1].out_features


def _checkpoint_dir(path: Path) -> Path:
    """A checkpoint directory from a path that may name its model.safetensors."""
    if path.is_file() and path.suffix == ".safetensors":
        return path.parent
    return path


def load_predictor(path, *, task: Optional[str] = None, block_rows: int = 512,
                   preprocessing: bool = True) -> Predictor:
    """A :class:`Predictor` from a saved model: a run directory written by ``ember train``
    (with the run's standardization and class labels, so it takes the raw feature rows
    ``ember predict`` takes and gives its answers), a checkpoint directory (or its
    ``latest`` pointer), or a checkpoint's ``model.safetensors`` (its ``trainer.json``
    beside it gives the architecture). Only the architecture and the weights are read (and
    verified against the manifest): no optimizer state, no Trainer.

    ``task`` overrides what the checkpoint says (its loss: cross-entropy is classification).
    ``preprocessing=False`` gives the bare network of a run (it takes standardized features and
    gives standardized regression targets), as :func:`ember.load_model`'s does.

    Raises:
        CheckpointError: no checkpoint there, or a corrupt one.
    """
    p = _checkpoint_dir(as_path(path, "load_predictor: path"))
    ck = checkpoint.load_checkpoint(p, weights_only=True)
    model = checkpoint.model_from(ck, "cpu", preprocessing)
    if task is None and not isinstance(model, pre.RunModel) and "loss" in ck["state"]:
        try:
            task = get_loss(ck["state"]["loss"]).task
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{ck['path'] / 'trainer.json'}: bad 'loss' ({exc})") from None
    return Predictor(model, task=task, block_rows=block_rows, copy=False)
