"""One training step, four ways: the call that shows a batch, predicts, scores the loss, learns.

- :class:`LayerByLayer`: ``model.forward`` -> ``loss.forward`` -> ``loss.backward`` ->
  ``model.backward`` -> ``optimizer.step``, on either device (any model, any loss).
- :class:`CpuFused`: on the CPU, a plain Linear stack with cross-entropy or MSE runs forward, loss
  and backward as one kernel call (:meth:`ember.nn.Sequential.fused_plan`): the same kernels in
  the same order, so the same bits, without the Python between them.
- :class:`Accumulating`: ``accumulate_steps`` micro-batches per optimizer step, their gradients
  summed, each scaled so the step's gradient is the one of the batch of all their samples.
- :class:`DataParallel`: one rank of a data-parallel fit (:mod:`ember.distributed`): its
  slice of the global batch forward, loss and backward, each Linear layer's gradients summed
  across the ranks (started as soon as that layer's backward is done), then the update.
- :class:`CudaGraph`: on the GPU, a plain Linear stack with cross-entropy or MSE and SGD/Adam(W)
  is captured once per batch size as a CUDA graph and replayed (:mod:`ember.train.cuda_graph`);
  its loss, accuracy and norm stay on the device until the epoch ends.

:func:`choose` picks one for a fit (and says why in ``trainer.step_path``); :func:`graph_ok` is
the one test of whether a fit may replay CUDA graphs. Each step adds what it did to the epoch's
:class:`~ember.train.state.EpochTally` and returns ``(loss, grad_norm, skipped, samples)``
(``None`` for the values a CUDA-graph step leaves on the GPU).
"""
from __future__ import annotations

import itertools
import warnings
from typing import Optional

import numpy as np

from ember import distributed, nn, ops
from ember.backend import array_module, to_host
from ember.callbacks import ModelCheckpoint, ProgressBar, TensorBoard, TerminateOnNaN
from ember.losses import MSE, CrossEntropy
from ember.optim import SGD, Adam, AdamW

__all__ = ["Step", "LayerByLayer", "CpuFused", "Accumulating", "DataParallel", "CudaGraph",
           "choose",
           "graph_ok", "plain_stack", "set_fit_settings", "clear_fit_settings"]


class Step:
    """A fit's training step. ``inputs(loader, epoch, start)`` yields what one step takes (a
    batch; for :class:`Accumulating`, its micro-batches); calling the step trains on it."""

    #: how ``trainer.step_path`` names it
    path = "layer by layer"
    #: whether the step returns its loss, norm and skip flag (a CUDA-graph step does not)
    host_values = True

    def __init__(self, trainer, classify: bool, plain: bool):
        self.model, self.loss, self.optimizer = trainer.model, trainer.loss, trainer.optimizer
        self.classify = classify
        self.plain = plain
        self.params = trainer.model.parameters()

    def inputs(self, loader, epoch: int, start: int):
        return loader.batches(epoch, start)

    def begin_epoch(self, tally) -> None:
        """Called before the epoch's first step, with its running sums."""

    def end_epoch(self, trainer, loader, epoch: int, start: int, tally) -> None:
        """Called after the epoch's last step (or the one that stopped training)."""

    def abort(self, tally) -> None:
        """Called when a step or callback raised: leave the optimizer's counters true."""

    def weigh_samples(self, y_host) -> None:
        """For a step that splits batches: ``mean`` (the loss averages, rather than sums) and
        ``class_weight``, the loss's class weights on the host (None: every sample counts 1;
        a mean divides by its samples' summed class weights), with the host labels."""
        self.mean = getattr(self.loss, "reduction", "mean") != "sum"
        weight = getattr(self.loss, "weight", None) if self.mean else None
        self.class_weight = (None if weight is None else
                             np.asarray(to_host(weight), dtype=np.float64))
        self.y_host = y_host


class LayerByLayer(Step):
    def __call__(self, batch, tally):
        xb, yb = batch
        n = xb.shape[0]
        if not self.plain:
            nn.mark_zero(self.params)
        out = self.model.forward(xb)
        loss = self.loss.forward(out, yb)
        if self.classify:
            tally.correct += ops.accuracy(out, yb) * n
        self.model.backward(self.loss.backward())
        norm, skipped = self.optimizer.step()
        tally.add(loss * n, n, norm, skipped)
        return loss, norm, skipped, n


class CpuFused(Step):
    path = "fused"

    def __call__(self, batch, tally):
        xb, yb = batch
        n = xb.shape[0]
        model, loss_fn = self.model, self.loss
        key = model.step_key(n, loss_fn, self.classify)
        plans = model.step_cache()
        entry = plans.get(n)
        if entry is None or entry[0] != key:
            plan = model.fused_plan(xb, loss_fn, self.classify)
            # (the key after the plan: building it may have created the gradients)
            entry = plans[n] = (model.step_key(n, loss_fn, self.classify), plan)
        loss, correct = entry[1].step(xb, yb)
        if self.classify:
            tally.correct += correct / n * n  # the same float as ops.accuracy(...) * n
        norm, skipped = self.optimizer.step()
        tally.add(loss * n, n, norm, skipped)
        return loss, norm, skipped, n


class Accumulating(Step):
    """``accumulate`` micro-batches per optimizer step (see ``Trainer.fit``)."""

    def __init__(self, trainer, classify: bool, plain: bool, accumulate: int, y_host):
        super().__init__(trainer, classify, plain)
        self.accumulate = accumulate
        self.weigh_samples(y_host)

    def inputs(self, loader, epoch: int, start: int):
        """Per step: its micro-batches (drawn lazily: the loader reuses its buffers) and what
        each micro-batch's mean divides by."""
        bs, nb, accum = loader.batch_size, len(loader), self.accumulate
        micro = loader.batches(epoch, start * accum)
        order = loader.order(epoch) if self.class_weight is not None else None
        for s in range(start, -(-nb // accum)):
            first, last = s * accum, min(s * accum + accum, nb)
            sizes = [min(bs, loader.n - b * bs) for b in range(first, last)]
            denoms = [float(m) for m in sizes]
            if order is not None:
                w = self.class_weight[self.y_host[order[first * bs:first * bs + sum(sizes)]]]
                ends = np.cumsum([0] + sizes)
                denoms = [float(w[a:e].sum()) for a, e in zip(ends[:-1], ends[1:])]
            yield itertools.islice(micro, last - first), denoms

    def __call__(self, batch, tally):
        micro, denoms = batch
        model, loss_fn, mean = self.model, self.loss, self.mean
        # scaled by its share of the step's total, the summed gradients are the mean over all
        # the step's samples
        total = sum(denoms)
        step_loss, step_n = 0.0, 0
        for j, (xb, yb) in enumerate(micro):
            n = xb.shape[0]
            if self.plain:
                model.set_accumulate(j > 0)
            elif j == 0:
                nn.mark_zero(self.params)
            out = model.forward(xb)
            loss = loss_fn.forward(out, yb)
            if self.classify:
                tally.correct += ops.accuracy(out, yb) * n
            g = loss_fn.backward()
            if mean and denoms[j] != total:
                g = g * np.float32(denoms[j] / total if total else 0.0)
            model.backward(g)
            step_loss += loss * denoms[j] if mean else loss
            step_n += n
        # the step's loss is the one of the batch of all its samples (and so is the epoch's
        # average: the same as a fit with batches that large)
        step_loss = step_loss / total if mean and total else step_loss
        norm, skipped = self.optimizer.step()
        tally.add(step_loss * step_n, step_n, norm, skipped)
        return step_loss, norm, skipped, step_n


class DataParallel(Step):
    """One rank's step of a data-parallel fit: the loader gives this rank's slice of each global
    batch; its gradients, scaled by the slice's share of the batch (its samples, or its class
    weights, over the batch's), are summed across the ranks in rank order
    (:class:`ember.distributed.GradientReducer`), so every rank steps on the gradient one
    process would compute for the whole batch, up to float rounding. The loss and accuracy are
    the whole batch's too. With ``accumulate`` > 1, a step is that many global micro-batches
    (as :class:`Accumulating`): each slice's loss gradient is scaled by its share of the step,
    the gradients add up locally, and the reduction runs during the last one's backward."""

    def __init__(self, trainer, classify: bool, plain: bool, world, y_host, accumulate: int = 1):
        super().__init__(trainer, classify, plain)
        self.world = world
        engine = "NCCL" if world.nccl is not None else "MPI"
        self.path = f"data-parallel over {world.size} processes ({engine}), layer by layer"
        self.accumulate = accumulate
        self.weigh_samples(y_host)
        self.reducer = None
        self.key = None
        self.bucket_of: dict = {}
        self.hooked = isinstance(self.model, nn.Sequential)
        self.dropouts = [m for m in self.model.modules() if isinstance(m, nn.Dropout)]
        #: one batch a step through the CPU's fused plan (as CpuFused), each layer's reduction
        #: started from the plan's per-layer callback
        self.fused = (accumulate == 1 and trainer.fused_steps and plain and
                      self.model.fused_ok(self.loss))
        if self.fused:
            self.path = self.path.replace("layer by layer", "fused")

    def inputs(self, loader, epoch: int, start: int):
        """Per step: this rank's slices (drawn lazily: the loader reuses its buffers) and, for
        each, (its first row, the global batch's rows, every rank's weight of it: their rows, or
        their samples' class weights)."""
        order = loader.order(epoch) if self.class_weight is not None else None
        bs, n, nb, accum = loader.batch_size, loader.n, len(loader), self.accumulate
        r, p = self.world.rank, self.world.size
        micro = loader.batches(epoch, start * accum)
        for s in range(start, -(-nb // accum)):
            first, last = s * accum, min(s * accum + accum, nb)
            parts = []
            for b in range(first, last):
                m = min(bs, n - b * bs)
                bounds = [distributed.shard_bounds(m, q, p) for q in range(p)]
                weights = [float(hi - lo) for lo, hi in bounds]
                if order is not None:
                    w = self.class_weight[self.y_host[order[b * bs:b * bs + m]]]
                    weights = [float(w[lo:hi].sum()) for lo, hi in bounds]
                parts.append((bounds[r][0], m, weights))
            yield itertools.islice(micro, last - first), parts

    def _buckets(self):
        """The reducer for the model's trainable parameters: a bucket per Linear layer of a
        Sequential, in backward order (last layer first), else one bucket."""
        params = [q for q in self.params if q.requires_grad]
        key = tuple((id(q), q.data.size) for q in params)
        if key != self.key:
            if self.hooked:
                buckets, self.bucket_of = [], {}
                for lin in reversed([la for la in self.model.layers if isinstance(la, nn.Linear)]):
                    mine = [q for _, q in lin.named_parameters() if q.requires_grad]
                    if mine:
                        self.bucket_of[id(lin)] = len(buckets)
                        buckets.append(mine)
                seen = {id(q) for bk in buckets for q in bk}
                rest = [q for q in params if id(q) not in seen]
                buckets += [rest] if rest else []
            else:
                buckets = [params]
            self.reducer = self.world.reducer(buckets)
            self.reducer.bind()
            self.key = key
        return self.reducer

    def _ready(self, layer) -> None:
        b = self.bucket_of.get(id(layer))
        if b is not None:
            self.reducer.start(b)

    def _skip_dropout(self, xb, m: int) -> None:
        """A rank with no rows in a batch: its Dropout counters advance as the others' do."""
        if any(d.per_row is None for d in self.dropouts):  # (a resumed fit's first step)
            counters = [d.counter for d in self.dropouts]
            for d in self.dropouts:
                d.rows = (0, 1)
            # (one zero row through the model: each Dropout learns its row width)
            xp = array_module(xb)
            self.model.forward(xp.zeros((1,) + tuple(xb.shape[1:]), dtype=xb.dtype))
            for d, c in zip(self.dropouts, counters):
                d.counter = c
        for d in self.dropouts:
            d.advance(m)

    def _fused(self, xb, yb):
        """Forward, loss and backward of this rank's slice as one kernel call (the plan of its
        size, as CpuFused), each layer's reduction started as its backward finishes."""
        n, model, loss_fn = xb.shape[0], self.model, self.loss
        plans = model.step_cache()
        entry = plans.get(n)
        if entry is None or entry[0] != model.step_key(n, loss_fn, self.classify):
            plan = model.fused_plan(xb, loss_fn, self.classify)
            entry = plans[n] = (model.step_key(n, loss_fn, self.classify), plan)
        return entry[1].step(xb, yb, self._ready)

    def __call__(self, batch, tally):
        micro, parts = batch
        reducer = self._buckets()
        r = self.world.rank
        total = sum(sum(weights) for _, _, weights in parts)
        single = len(parts) == 1
        loss_sum = correct = 0.0
        written = False
        for j, ((xb, yb), (lo, m, weights)) in enumerate(zip(micro, parts)):
            for d in self.dropouts:  # (each rank's mask: its rows of the whole batch's mask)
                d.rows = (lo, m)
            n = xb.shape[0]
            if not n:
                if self.dropouts:
                    self._skip_dropout(xb, m)
                continue
            share = (weights[r] / total if total else 0.0) if self.mean else 1.0
            if self.plain:
                self.model.set_accumulate(written)  # (the first slice writes, the rest add)
            elif not written:
                nn.mark_zero(self.params)
            if self.fused:
                loss, right = self._fused(xb, yb)
                correct += right
                loss_sum += loss * share if self.mean else loss
                written = True
                continue
            if self.hooked:
                self.model.set_grad_ready(self._ready if j == len(parts) - 1 else None)
            out = self.model.forward(xb)
            loss = self.loss.forward(out, yb)
            if self.classify:
                correct += ops.accuracy(out, yb) * n
            g = self.loss.backward()
            if not single and self.mean and share != 1.0:  # (several: each loss gradient)
                g = g * np.float32(share)
            self.model.backward(g)
            loss_sum += loss * share if self.mean else loss
            written = True
        if written:
            reducer.start_rest()  # (buckets no layer's backward started)
        # one batch: each rank's partial gradients are scaled by its share as they are summed
        shares = ([w / total if total else 0.0 for w in parts[0][2]]
                  if single and self.mean else [1.0] * self.world.size)
        loss_sum, correct = reducer.finish([loss_sum, correct], shares)
        norm, skipped = self.optimizer.step()
        rows = sum(m for _, m, _ in parts)
        tally.correct += correct
        tally.add(loss_sum * rows, rows, norm, skipped)
        return loss_sum, norm, skipped, rows


class CudaGraph(Step):
    """GPU steps replayed as CUDA graphs: nothing is read back until the epoch ends. A
    non-finite loss stops training at the end of the epoch (the optimizer skips such steps)."""

    path = "cuda graphs"
    host_values = False

    def __init__(self, trainer, classify: bool, plain: bool):
        super().__init__(trainer, classify, plain)
        from ember.train import cuda_graph  # GPU only: it needs the CUDA module
        self.runner = cuda_graph.GraphRunner(trainer, classify)

    def begin_epoch(self, tally) -> None:
        self.runner.begin_epoch(tally)

    def __call__(self, batch, tally):
        xb, yb = batch
        n = xb.shape[0]
        self.runner.step(xb, yb)
        tally.seen += n
        tally.steps += 1
        return None, None, None, n

    def end_epoch(self, trainer, loader, epoch: int, start: int, tally) -> None:
        if epoch + 1 < trainer.epochs and not trainer.stop_training:
            loader.prefetch(epoch + 1)  # on the host while the GPU finishes this epoch
        bad = self.runner.collect(tally)
        if bad is not None:
            index, value = bad
            trainer.stop_training = True
            trainer.stop_reason = (f"loss became {value} at epoch {epoch + 1}, batch "
                                   f"{start + index + 1}")
        failure = self.runner.unreported_failure()
        if failure is not None:
            warnings.warn(f"ember: a training step could not be captured as a CUDA graph "
                          f"({failure}); that batch size trained step by step",
                          RuntimeWarning, stacklevel=4)

    def abort(self, tally) -> None:
        try:  # keep the optimizer's counters true for whoever catches the error
            self.runner.collect(tally)
        except Exception:  # noqa: BLE001 - the first error is the one to see
            pass


def plain_stack(model) -> bool:
    """A Sequential of ember's own layers, run by Sequential's backward, with no parameter
    shared by two layers: every step writes each gradient once, so the Trainer tells it to
    write (or add) rather than zero_grad before each step, as the fused and graph steps do."""
    if not (isinstance(model, nn.Sequential) and type(model).backward is nn.Sequential.backward):
        return False
    return (all(type(layer).__module__ == nn.__name__ and not isinstance(layer, nn.Sequential)
                for layer in model.layers) and
            sum(1 for layer in model.layers for _ in layer.named_parameters()) ==
            len(model.parameters()))


def graph_ok(trainer, callbacks) -> Optional[str]:
    """None when ``trainer``'s fit can replay its steps as CUDA graphs, else the reason not."""
    model, loss, opt = trainer.model, trainer.loss, trainer.optimizer
    if trainer.device != "cuda":
        return "not on the GPU"
    if not trainer.cuda_graphs:
        return "turned off (Trainer.cuda_graphs = False)"
    if not (isinstance(model, nn.Sequential) and model.is_linear_stack()):
        return "the model is not a plain stack of Linear layers and activations"
    if type(loss) not in (CrossEntropy, MSE):
        return f"loss {type(loss).__name__} has no device-side forward"
    if type(opt) not in (SGD, Adam, AdamW):
        return f"optimizer {type(opt).__name__} has no device-state step"
    for cb in callbacks.batch_end_callbacks:
        if type(cb) in (TerminateOnNaN, ProgressBar):
            continue
        if type(cb) in (ModelCheckpoint, TensorBoard) and not cb.every_n_steps:
            continue  # (reads no batch's values)
        return f"callback {type(cb).__name__} wants every batch's values"
    if not plain_stack(model):  # (a captured step writes each gradient once)
        return "a parameter is shared by two layers"
    return None


def set_fit_settings(model, plain: bool) -> None:
    """What the fitted model is told for the length of a fit (:func:`clear_fit_settings`
    undoes it): a Sequential skips its input gradient and, with its own forward, sends its
    output to reused buffers; a plain stack writes each gradient once a step."""
    if isinstance(model, nn.Sequential):
        model.set_fit_settings(reuse_buffers=type(model).forward is nn.Sequential.forward,
                               accumulate=False if plain else None)
    if plain:
        nn.written_every_step(model.parameters())


def clear_fit_settings(model) -> None:
    if isinstance(model, nn.Sequential):
        model.clear_fit_settings()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.rows = None  # (a data-parallel fit's slice)


def choose(trainer, callbacks, classify: bool, accumulate: int, y_host,
           world=None) -> Step:
    """The step for ``trainer``'s fit; sets ``trainer.step_path`` to what was chosen and why.
    ``world``: a data-parallel fit's :class:`ember.distributed.World` (None: one process)."""
    model = trainer.model
    plain = plain_stack(model)
    set_fit_settings(model, plain)
    if world is not None:
        step = DataParallel(trainer, classify, plain, world, y_host, accumulate)
        trainer.step_path = step.path
        return step
    if trainer.device == "cuda":
        why = "accumulate_steps > 1" if accumulate > 1 else graph_ok(trainer, callbacks)
        if why is None:
            step = CudaGraph(trainer, classify, plain)
        elif accumulate > 1:
            step = Accumulating(trainer, classify, plain, accumulate, y_host)
        else:
            step = LayerByLayer(trainer, classify, plain)
        trainer.step_path = step.path if why is None else f"step by step ({why})"
        return step
    if accumulate > 1:
        step = Accumulating(trainer, classify, plain, accumulate, y_host)
    elif trainer.fused_steps and plain and model.fused_ok(trainer.loss):
        step = CpuFused(trainer, classify, plain)
    else:
        step = LayerByLayer(trainer, classify, plain)
    trainer.step_path = step.path
    return step
