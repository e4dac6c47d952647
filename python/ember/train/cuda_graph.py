"""GPU training steps replayed as CUDA graphs (the CudaGraph step of :mod:`ember.train.steps`).

A step on the GPU is some twenty kernel launches, each behind a Python call that checks its
arguments; at small batches the GPU waits on that Python. Here the step runs once as usual
(the same Python, the same kernels: ``Sequential.forward``, ``loss.forward_device``,
``Sequential.backward``, ``optimizer.device_step``), then is captured once as a CUDA graph, and
every later step of that batch size is one graph launch.

What a replay needs, and how it is kept:

- Fixed addresses. Every array a captured kernel touches stays where it was: the batch (the
  DataLoader keeps one buffer per batch size), the layers' buffers, the gradients, the optimizer
  state, and whatever the bindings allocate (their outputs and workspaces): while a step is
  recorded, ``ember._cuda_ops.allocating_from`` hands the bindings arrays this step keeps, and during
  the capture the same arrays again, in the same order. The step holds a reference to each, so
  none goes back to CuPy's pool while the graph lives. CuPy's own allocator is made to fail
  during the capture: any allocation there (a bug) aborts the capture, and the fit goes on
  without a graph instead of replaying into memory someone else owns.
- No synchronisation. The loss, the accuracy count, the gradient norm and the skip flag are added
  up on the device, and read once per epoch (:meth:`GraphRunner.collect`); the optimizer reads
  the step number and learning rate from device memory and advances the step itself.

Differences from the step-by-step loop, all documented on :class:`ember.Trainer`: per-batch
callbacks other than ember's own (TerminateOnNaN, ProgressBar, ModelCheckpoint and TensorBoard
without ``every_n_steps``) make the fit go step by step; a non-finite loss stops training at the end of
the epoch in which it appeared (the optimizer skips such steps meanwhile) rather than at once.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ember.train.state import EpochTally

try:
    from ember import _cuda_ops
except ImportError:  # built without CUDA: no step is captured, but Recorder still imports
    _cuda_ops = None

__all__ = ["GraphRunner", "Recorder"]

_KERNELS = r"""
extern "C" __global__ void ember_graph_tally(const double* loss, const double* norm,
                                              const long long* skipped, double n, double* acc,
                                              long long* counters) {
  // acc: {loss * n summed, correct, grad_norm summed, skipped steps, first non-finite loss}
  // counters: {steps tallied, index of the first non-finite loss or -1}
  // Rounded as the Trainer's Python loop rounds (acc += loss * n): no fused multiply-add.
  const double l = loss[0];
  acc[0] = __dadd_rn(acc[0], __dmul_rn(l, n));
  acc[2] = __dadd_rn(acc[2], norm[0]);
  acc[3] = __dadd_rn(acc[3], (double)skipped[0]);
  if (!isfinite(l) && counters[1] < 0) {
    counters[1] = counters[0];
    acc[4] = l;
  }
  counters[0] += 1;
}

extern "C" __global__ void ember_graph_correct(const long long* pred, const long long* labels,
                                                int n, double* acc) {
  __shared__ int part[256];
  int c = 0;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    c += pred[i] == labels[i];
  part[threadIdx.x] = c;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0 && part[0] != 0) atomicAdd(&acc[1], (double)part[0]);  // exact: integers
}
"""
_module = None


def _kernels():
    global _module
    if _module is None:
        import cupy
        _module = cupy.RawModule(code=_KERNELS)
    return _module.get_function("ember_graph_tally"), _module.get_function("ember_graph_correct")


class Recorder:
    """The allocator of a recorded step: new arrays, kept in order; then, for the capture, the
    same arrays again in the same order."""

    def __init__(self):
        self.arrays: list = []
        self.replaying = False
        self.i = 0

    def __call__(self, shape, dtype="float32"):
        if not self.replaying:
            import cupy
            a = cupy.empty(shape, dtype=dtype)
            self.arrays.append(a)
            return a
        if self.i >= len(self.arrays):
            raise RuntimeError("the captured step allocated more than the recorded one")
        a = self.arrays[self.i]
        self.i += 1
        if a.shape != tuple(shape if isinstance(shape, (tuple, list)) else (shape,)) or \
                a.dtype != np.dtype(dtype):
            raise RuntimeError("the captured step allocated other arrays than the recorded one")
        return a


def _no_allocation(size):
    raise RuntimeError("CuPy allocated memory during a CUDA-graph capture")


class _Step:
    """One batch size's captured step and the arrays it keeps alive."""

    def __init__(self, key, xb, yb):
        self.key = key
        self.xb, self.yb = xb, yb
        self.graph = None
        self.norm = None
        self.recorder = Recorder()
        self.keep: list = []


class GraphRunner:
    """Runs one fit's training steps on the GPU, captured once per batch size and replayed.

    ``step(xb, yb)`` trains on one batch without waiting for the GPU; ``collect(tally)`` waits,
    puts the epoch's loss/accuracy/norm sums into ``tally`` (the Trainer's
    :class:`~ember.train.state.EpochTally`) and brings the optimizer's step count, skipped steps
    and last gradient norm up to date on the host.
    """

    def __init__(self, trainer, classify: bool):
        import cupy
        self.cp = cupy
        self.trainer = trainer
        self.classify = classify
        self.steps: dict[int, _Step] = {}
        opt = trainer.optimizer
        self.state = cupy.zeros(2, dtype=cupy.int64)  # {step, lr bits}: see begin_epoch
        self.lr = opt.lr
        self.acc = cupy.zeros(5, dtype=cupy.float64)
        self.counters = cupy.zeros(2, dtype=cupy.int64)
        self.last_norm = None  # the device norm of the last step launched
        self.failed: Optional[str] = None  # why a capture failed (the first time), if one did
        self._failure_reported = False
        self._tally, self._correct = _kernels()
        self.begin_epoch(EpochTally())

    # -- per epoch --------------------------------------------------------------------------
    def begin_epoch(self, tally: EpochTally) -> None:
        """Start the device sums from the Trainer's (non-zero after a mid-epoch resume), and the
        device step state from the optimizer's (a callback may have changed either)."""
        opt = self.trainer.optimizer
        self.acc.set(np.array([tally.loss_sum, tally.correct, tally.norm_sum, tally.skipped, 0.0],
                              dtype=np.float64))
        self.counters.set(np.array([0, -1], dtype=np.int64))
        self.state.set(np.array([opt.step_count + 1, 0], dtype=np.int64))
        self.state[1:].view(self.cp.float64)[0] = float(opt.lr)
        self.lr = opt.lr

    def collect(self, tally: EpochTally) -> Optional[tuple[int, float]]:
        """Wait for the GPU; put the epoch's sums into ``tally`` and the optimizer's counters on
        the host. Returns ``(batch index within the tallied steps, loss)`` of the first
        non-finite loss, or None."""
        opt = self.trainer.optimizer
        dev = self.acc.get()
        counters = self.counters.get()
        state = self.state.get()
        tally.loss_sum, tally.correct, tally.norm_sum = float(dev[0]), float(dev[1]), float(dev[2])
        skipped_before = tally.skipped
        tally.skipped = int(dev[3])
        opt.skipped_steps += tally.skipped - skipped_before
        opt.step_count = int(state[0]) - 1
        if self.last_norm is not None:
            opt.last_grad_norm = float(self.last_norm.get()[0])
        return None if counters[1] < 0 else (int(counters[1]), float(dev[4]))

    def unreported_failure(self) -> Optional[str]:
        """Why a capture failed, the first time it is asked after one did; else None."""
        if self.failed is None or self._failure_reported:
            return None
        self._failure_reported = True
        return self.failed

    # -- per step ---------------------------------------------------------------------------
    def _key(self, xb, yb):
        """What a captured step bakes in: the model's :meth:`~ember.nn.Sequential.step_key`,
        the batch buffers' addresses and the optimizer's :meth:`~ember.optim.Optimizer.graph_key`."""
        t = self.trainer
        return (t.model.step_key(xb.shape[0], t.loss, self.classify), xb.data.ptr, yb.data.ptr,
                t.optimizer.graph_key())

    def _calls(self, xb, yb, n):
        """The step's kernels: the same calls as the Trainer's step-by-step loop, with every
        value left on the device."""
        t = self.trainer
        out = t.model.forward(xb)
        loss = t.loss.forward_device(out, yb)
        if self.classify:
            pred = _cuda_ops.argmax(out, None)
            blocks = min(1024, (n + 255) // 256)
            self._correct((blocks,), (256,), (pred, yb, np.int32(n), self.acc))
        t.model.backward(t.loss.backward())
        norm, skipped = t.optimizer.device_step(self.state)
        self._tally((1,), (1,), (loss, norm, skipped, np.float64(n), self.acc, self.counters))
        return norm, [out, loss, norm, skipped]

    def step(self, xb, yb) -> None:
        opt = self.trainer.optimizer
        if opt.lr != self.lr:  # a schedule changed it: the step reads it from the device
            self.state[1:].view(self.cp.float64)[0] = float(opt.lr)
            self.lr = opt.lr
        n = xb.shape[0]
        key = self._key(xb, yb)
        st = self.steps.get(n)
        if st is None or st.key != key:
            # First step of this batch size (or the model/optimizer changed): run it while
            # recording what the bindings allocate, then capture the next ones at once, while
            # every buffer the step used still exists (a validation pass in between would drop
            # the model's). The key is taken again: the first step may create the gradients.
            st = self.steps[n] = _Step(key, xb, yb)
            self._run(st, xb, yb, n, record=True)
            st.key = self._key(xb, yb)
            self._capture(st, xb, yb, n)
            return
        if st.graph is None:  # the capture failed: this batch size goes step by step
            self._run(st, xb, yb, n, record=False)
            return
        st.graph.launch()
        self.last_norm = st.norm

    def _run(self, st, xb, yb, n, record):
        with _cuda_ops.allocating_from(st.recorder if record else None):
            st.norm, keep = self._calls(xb, yb, n)
        self.last_norm = st.norm
        if record:
            st.keep = keep + self._model_arrays()

    def _model_arrays(self) -> list:
        """Every array the step's kernels touch that the recorder did not hand out."""
        t = self.trainer
        return t.model.arrays_in_use() + t.loss.arrays_in_use()

    def _capture(self, st, xb, yb, n) -> None:
        cp = self.cp
        rec = st.recorder
        rec.replaying, rec.i = True, 0
        stream = cp.cuda.Stream(non_blocking=True)
        # The capture records kernels without running them: wait for the step in flight first
        # so that nothing it does is still pending on another stream when the graph is built.
        cp.cuda.get_current_stream().synchronize()
        previous = cp.cuda.get_allocator()  # CuPy's allocator, per thread like ember's hook
        graph = None
        try:
            with _cuda_ops.allocating_from(rec), stream:
                cp.cuda.set_allocator(_no_allocation)
                stream.begin_capture()
                try:
                    norm, _ = self._calls(xb, yb, n)
                finally:
                    graph = stream.end_capture()
                    cp.cuda.set_allocator(previous)
            if rec.i != len(rec.arrays):
                raise RuntimeError("the captured step allocated less than the recorded one")
        except Exception as exc:  # noqa: BLE001 - any failure: no graph, the fit goes on
            if self.failed is None:
                self.failed = f"{type(exc).__name__}: {exc}"
            st.graph = None
            return
        finally:
            cp.cuda.set_allocator(previous)
        st.graph = graph
        st.keep = st.keep + [stream, norm]  # (the batch buffers: _Step holds them)
        # st.norm stays the recorded step's array: the capture's calls returned the same one.
