"""Batching and splitting.

:class:`DataLoader` shuffles with a generator seeded by ``(seed, epoch)``: the order of epoch ``e``
is a pure function of the two, so a run resumed in the middle of an epoch sees the same batches
as one never interrupted, and ``batches(epoch, start=k)`` jumps to batch ``k`` in O(1).
Iterating the loader (``for xb, yb in loader``) goes through one epoch per loop, the next
epoch's order each time (an epoch counter, ``loader.epoch``, which ``set_epoch`` sets, as on
PyTorch's DistributedSampler). Batches are gathered with NumPy fancy indexing (no per-sample
Python work) into new arrays, which stay valid however long they are kept; with
``reuse_buffers=True`` (what ``Trainer.fit`` uses) they go to buffers reused from batch to
batch instead, each valid until the next batch is drawn. CuPy arrays (GPU training) are batched
on the device the same way: the epoch's order is still computed with NumPy (same seed, same
order as on the CPU), copied to the device once per epoch, and batches are gathered with
``cupy.take``.

Example:
    >>> import numpy as np
    >>> from ember.data import DataLoader
    >>> x = np.arange(20, dtype=np.float32).reshape(10, 2); y = np.arange(10)
    >>> loader = DataLoader(x, y, batch_size=4, shuffle=True, seed=0)
    >>> [xb.shape[0] for xb, yb in loader.batches(epoch=0)]
    [4, 4, 2]
    >>> first, second = [yb for _, yb in loader], [yb for _, yb in loader]  # epochs 0 and 1
    >>> bool((np.concatenate(first) == loader.order(0)).all()), loader.epoch
    (True, 2)
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from ember import _validate, ops
from ember.backend import array_module, is_cuda_array, to_host
from ember.distributed import shard_bounds

__all__ = ["DataLoader", "train_val_split", "check_xy"]


def _real_dtype(dtype) -> bool:
    """Integers, floats and bools: not complex (the imaginary part would be dropped), not
    timedelta/datetime (NumPy counts timedelta64 as an integer), not object or text."""
    return dtype.kind in "biuf"


def check_xy(x, y, *, task: Optional[str] = None, n_features: Optional[int] = None,
             n_classes: Optional[int] = None, where: str = "fit"):
    """Validate and normalise training data; returns ``(x float32 C-contiguous, y)``.

    ``y`` becomes int64 class indices for classification and float32 for regression.

    Raises:
        ValueError: empty data, length mismatch, wrong rank or feature count, NaN/Inf in x or y,
            labels outside [0, n_classes), or non-integer labels for classification.
        TypeError: non-numeric data.
    """
    xa = np.asarray(to_host(x))
    if not _real_dtype(xa.dtype):
        raise TypeError(f"{where}: x must hold real numbers (int, float or bool), got dtype "
                        f"{xa.dtype}")
    if xa.ndim != 2:
        raise ValueError(f"{where}: x must be 2-D (samples, features), got shape {xa.shape}")
    if xa.shape[0] == 0:
        raise ValueError(f"{where}: x is empty (0 samples)")
    if xa.shape[1] == 0:
        raise ValueError(f"{where}: x has 0 features")
    if n_features is not None and xa.shape[1] != n_features:
        raise ValueError(f"{where}: x has {xa.shape[1]} features, the model expects {n_features}")
    with np.errstate(over="ignore"):  # a value too large for float32: named below
        x32 = np.ascontiguousarray(xa, dtype=np.float32)
    if not np.isfinite(x32).all():
        bad = np.argwhere(~np.isfinite(x32))[0]
        value = xa[bad[0], bad[1]]
        if np.isfinite(value):  # finite in its own dtype: too large for float32
            raise ValueError(f"{where}: x[{bad[0]}, {bad[1]}] = {value} does not fit in "
                             f"float32 (|x| <= 3.4e38)")
        raise ValueError(f"{where}: x holds NaN or Inf (first at row {bad[0]}, column {bad[1]})")
    xa = x32
    if y is None:
        return xa, None
    ya = np.asarray(to_host(y))
    if ya.ndim == 0 or ya.shape[0] != xa.shape[0]:
        raise ValueError(f"{where}: x has {xa.shape[0]} samples but y has "
                         f"{ya.shape[0] if ya.ndim else 'a scalar'}")
    if not _real_dtype(ya.dtype):
        raise TypeError(f"{where}: y must hold real numbers (int, float or bool), got dtype "
                        f"{ya.dtype}")
    if task == "classification":
        if ya.ndim != 1:
            raise ValueError(f"{where}: classification labels must be 1-D class indices, got "
                             f"shape {ya.shape}")
        if not np.issubdtype(ya.dtype, np.integer):
            if np.issubdtype(ya.dtype, np.floating) and np.all(np.isfinite(ya)) and \
                    np.all(ya == np.round(ya)):
                raise ValueError(f"{where}: classification labels must be integers, got dtype "
                                 f"{ya.dtype} (convert with y.astype(int) if they are classes)")
            raise ValueError(f"{where}: classification labels must be integer class indices, "
                             f"got dtype {ya.dtype}")
        if ya.dtype.kind == "u" and ya.max() > np.iinfo(np.int64).max:  # would wrap negative
            bad = int(np.argmax(ya > np.iinfo(np.int64).max))
            raise ValueError(f"{where}: label {ya[bad]} at index {bad} is outside "
                             f"[0, {n_classes if n_classes is not None else 'n_classes'})")
        ya = ya.astype(np.int64)
        if ya.min() < 0 or (n_classes is not None and ya.max() >= n_classes):
            bad = int(np.argmax((ya < 0) | (ya >= (n_classes or np.iinfo(np.int64).max))))
            raise ValueError(f"{where}: label {ya[bad]} at index {bad} is outside "
                             f"[0, {n_classes if n_classes is not None else 'n_classes'})")
    else:
        ya = np.ascontiguousarray(ya, dtype=np.float32)
        if ya.ndim == 1:
            ya = ya.reshape(-1, 1)
        if ya.ndim != 2:
            raise ValueError(f"{where}: regression targets must be 1-D or 2-D, got shape "
                             f"{ya.shape}")
        if not np.isfinite(ya).all():
            raise ValueError(f"{where}: y holds NaN or Inf")
    return xa, ya


class DataLoader:
    """Mini-batches of ``(x, y)`` in a seeded order.

    Args:
        x: (n, features) float32 array (NumPy, or CuPy for batches on the GPU).
        y: (n, ...) array on the same device, or None.
        batch_size: samples per batch (>= 1).
        shuffle: shuffle each epoch (order a pure function of ``(seed, epoch)``).
        drop_last: drop the last incomplete batch.
        seed: shuffling seed (an integer >= 0).
        reuse_buffers: False (the default): every batch is a new pair of arrays, valid for as
            long as it is kept (``list(loader)`` holds the epoch). True: batches go to buffers
            reused from batch to batch (one per batch size; no allocation per step), each
            valid only until the next batch is drawn — what ``Trainer.fit`` uses.
        shard: ``(rank, size)``: each batch is rank ``rank``'s slice of the global batch of
            ``batch_size`` (:func:`ember.distributed.shard_bounds`: contiguous, sizes differing
            by at most one; empty when the batch has fewer rows than ``size``), what
            data-parallel training uses; ``len(loader)`` and the order stay the global ones.
            None (the default): whole batches.

    ``for xb, yb in loader`` runs the epoch ``loader.epoch`` and advances it, so each loop
    over the loader sees the next epoch's order; ``set_epoch(e)`` picks the epoch the next
    loop runs. ``batches(epoch, start)`` gives any epoch (from any batch) without touching the
    counter.

    Raises:
        TypeError: ``x`` or ``y`` is not a NumPy or CuPy array (lists are not batched: convert
            them with ``numpy.asarray``, or use :func:`check_xy`).
        ValueError: bad ``batch_size``, ``seed`` or ``reuse_buffers``, empty data, ``x`` and
            ``y`` of different lengths or devices, or ``drop_last`` with fewer samples than
            ``batch_size``.
    """

    reuse_buffers = False
    epoch = 0

    def __init__(self, x, y=None, batch_size: int = 32, shuffle: bool = True,
                 drop_last: bool = False, seed: int = 0, reuse_buffers: bool = False,
                 shard: Optional[tuple] = None):
        _validate.flag("DataLoader", "reuse_buffers", reuse_buffers)
        if shard is not None:
            if not (isinstance(shard, tuple) and len(shard) == 2):
                raise ValueError(f"DataLoader: shard must be a pair (rank, size), got {shard!r}")
            size = _validate.positive_int("DataLoader", "shard size", shard[1])
            shard = (_validate.int_in("DataLoader", "shard rank", shard[0], 0, size - 1), size)
        self.shard = shard
        _validate.positive_int("DataLoader", "batch_size", batch_size)
        for name, a in (("x", x), ("y", y)):
            if a is None and name == "y":
                continue
            if not (isinstance(a, np.ndarray) or is_cuda_array(a)) or not hasattr(a, "ndim"):
                raise TypeError(f"DataLoader: {name} must be a NumPy or CuPy array, got "
                                f"{type(a).__name__}")
            if a.ndim == 0:
                raise ValueError(f"DataLoader: {name} must have a samples axis, got a 0-d array")
        n = len(x)
        if n == 0:
            raise ValueError("DataLoader: the dataset is empty")
        if y is not None and len(y) != n:
            raise ValueError(f"DataLoader: x has {n} samples but y has {len(y)}")
        if y is not None and is_cuda_array(x) != is_cuda_array(y):
            raise ValueError(f"DataLoader: x and y must be on the same device, got x on "
                             f"{'the GPU' if is_cuda_array(x) else 'the CPU'} and y on "
                             f"{'the GPU' if is_cuda_array(y) else 'the CPU'}")
        self.seed = _validate.seed("DataLoader", seed)
        if drop_last and batch_size > n:
            raise ValueError(f"DataLoader: batch_size {batch_size} is larger than the dataset "
                             f"({n} samples) and drop_last=True: every epoch would be empty "
                             "(use a smaller batch_size or drop_last=False)")
        self.x, self.y = x, y
        self.n = n
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.reuse_buffers = bool(reuse_buffers)
        #: the epoch the next ``for ... in loader`` runs (see set_epoch)
        self.epoch = 0
        self._bufs: dict = {}
        self._prefetched = None  # (epoch, order on the batches' device, event or None)
        # The array module batches are gathered with: chosen once, here, from x's device.
        self._xp = array_module(x)

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.n // self.batch_size
        return (self.n + self.batch_size - 1) // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        """Sample indices of epoch ``epoch`` (a pure function of seed and epoch)."""
        epoch = _validate.int_at_least("DataLoader", "epoch", epoch, 0)
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def prefetch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s order now, and for GPU data copy it to the device on a side
        stream: the Trainer calls this while the GPU still runs the current epoch, so the next
        one starts without the host's shuffle (a 1M-sample permutation takes ~10 ms) or the
        copy. :meth:`batches` of that epoch then uses it; the order is the same either way."""
        idx = self.order(epoch)
        event = None
        if self._xp is not np:
            cupy = self._xp
            stream = cupy.cuda.Stream(non_blocking=True)
            with stream:
                idx = cupy.asarray(idx)
                event = stream.record()
        self._prefetched = (int(epoch), idx, event)

    def _order_on_device(self, epoch: int):
        pre, self._prefetched = self._prefetched, None
        if pre is not None and pre[0] == epoch:
            if pre[2] is not None:
                self._xp.cuda.get_current_stream().wait_event(pre[2])
            return pre[1]
        idx = self.order(epoch)
        return idx if self._xp is np else self._xp.asarray(idx)  # one host-to-device copy

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``for ... in loader`` run epoch ``epoch`` (as PyTorch's
        ``DistributedSampler.set_epoch``); each loop then advances the counter by one."""
        self.epoch = _validate.int_at_least("DataLoader.set_epoch", "epoch", epoch, 0)

    def _buffer(self, key, arr, rows):
        # One buffer per batch size (a fit has at most two): a batch of a given size always lands
        # at the same address, which a training step replayed as a CUDA graph relies on.
        shape = (rows,) + arr.shape[1:]
        buf = self._bufs.get((key, rows))
        if buf is None or buf.shape != shape or buf.dtype != arr.dtype:
            buf = self._xp.empty(shape, dtype=arr.dtype)
            self._bufs[(key, rows)] = buf
        return buf

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple]:
        """Yield ``(x_batch, y_batch)`` of ``epoch`` from batch index ``start`` on
        (``0 <= start <= len(self)``; checked here, before the first batch is drawn). New
        arrays, or reused buffers with ``reuse_buffers`` (see the class)."""
        epoch = _validate.int_at_least("DataLoader.batches", "epoch", epoch, 0)
        start = _validate.int_in("DataLoader.batches", "start", start, 0, len(self),
                                 what=" (the batches per epoch)")
        return self._batches(epoch, start)

    def _batches(self, epoch: int, start: int) -> Iterator[tuple]:
        xp = self._xp
        idx = self._order_on_device(epoch)
        bs = self.batch_size
        # The indices are a permutation of range(n), always in bounds: NumPy's mode="clip" then
        # gives the same rows as the default "raise", which copies through a temporary buffer
        # (4.7 vs 1.5 us for a 200 x 64 batch). CuPy's take has no mode (and no such copy).
        kw = {"mode": "clip"} if xp is np else {}
        x = self.x
        # float32 features (what the Trainer passes) are gathered by ember's kernel, on the
        # threads that multiply the batch next (see ember.ops.gather_rows).
        fast = (type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == 2 and
                x.flags.c_contiguous and x.flags.aligned and x.size > 0)
        gather = ops.cpu_kernels.gather_rows  # (unchecked: x and sel are known good)
        reuse = self.reuse_buffers
        y = self.y
        part = self.shard
        for b in range(start, len(self)):
            sel = idx[b * bs:(b + 1) * bs]
            if part is not None:
                lo, hi = shard_bounds(len(sel), *part)
                sel = sel[lo:hi]
                if hi == lo:  # (a last batch with fewer rows than ranks)
                    yield x[:0], None if y is None else y[:0]
                    continue
            out = self._buffer("x", x, len(sel)) if reuse else None
            xb = (gather(x, sel, out) if fast else
                  xp.take(x, sel, axis=0, out=out, **kw))
            if y is None:
                yield xb, None
            else:
                yield xb, xp.take(y, sel, axis=0,
                                  out=self._buffer("y", y, len(sel)) if reuse else None, **kw)

    def __iter__(self):
        """One epoch: ``loader.epoch``'s batches; the counter moves on to the next epoch."""
        epoch = self.epoch
        self.epoch = epoch + 1
        return self._batches(epoch, 0)


def train_val_split(x, y, fraction: float = 0.2, seed: int = 0, stratify: bool = True):
    """Split into disjoint train and validation sets; ``fraction`` goes to validation.

    With ``stratify`` (and integer labels), each class is split in the same proportion.
    ``x`` and ``y`` are arrays (lists are converted with ``numpy.asarray``).
    Returns ``(x_train, y_train, x_val, y_val)``.
    """
    if not (_validate.is_real(fraction) and 0.0 < fraction < 1.0):
        _validate.fail("train_val_split", "fraction", "in (0, 1)", fraction)
    seed = _validate.seed("train_val_split", seed)
    arrays = []
    for name, a in (("x", x), ("y", y)):
        if not (isinstance(a, np.ndarray) or is_cuda_array(a)):
            if not isinstance(a, (list, tuple)):
                raise TypeError(f"train_val_split: {name} must be an array or a list, got "
                                f"{type(a).__name__}")
            try:
                a = np.asarray(a)
            except ValueError as exc:
                raise ValueError(f"train_val_split: {name} is a list that does not form an "
                                 f"array ({exc})") from None
        if a.ndim == 0:
            raise ValueError(f"train_val_split: {name} must have a samples axis, got a 0-d "
                             "array")
        arrays.append(a)
    x, y = arrays
    n = len(x)
    if len(y) != n:
        raise ValueError(f"train_val_split: x has {n} samples but y has {len(y)}")
    rng = np.random.default_rng(seed)
    y_np = np.asarray(y)
    k = int(round(n * fraction))  # the validation size asked for, whatever the classes
    if stratify and y_np.ndim == 1 and np.issubdtype(y_np.dtype, np.integer):
        classes, counts = np.unique(y_np, return_counts=True)
        # Each class rounded on its own, as long as that comes within 1 % of the size asked
        # for (the split every earlier version made, kept for the data it suits: many samples
        # a class). Small classes round far off (10 classes of 5 at 0.3 held out 40 %, at 0.1
        # nothing): then k is shared out in proportion instead, each class its floor and the
        # rest one each to the largest remainders (ties: the lower class).
        take = np.array([int(round(int(c) * fraction)) for c in counts], dtype=np.int64)
        if abs(int(take.sum()) - k) > max(1, n // 100) or take.sum() in (0, n):
            quota = counts * (k / n)
            take = np.floor(quota).astype(np.int64)
            extra = k - int(take.sum())
            if extra > 0:
                order = np.lexsort((np.arange(len(classes)), -(quota - take)))
                take[order[:extra]] += 1
        val = []
        for c, kc in zip(classes, take):
            members = np.flatnonzero(y_np == c)
            members = members[rng.permutation(len(members))]
            val.append(members[:kc])
        val_idx = np.sort(np.concatenate(val))
    else:
        val_idx = np.sort(rng.permutation(n)[:k])
    if len(val_idx) == 0 or len(val_idx) == n:
        raise ValueError(f"train_val_split: fraction {fraction} of {n} samples leaves an empty "
                         "split")
    mask = np.ones(n, dtype=bool)
    mask[val_idx] = False
    train_idx = np.flatnonzero(mask)
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]
