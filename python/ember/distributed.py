"""Data-parallel training on an existing engine: MPI through mpi4py (processes and hosts) and,
for GPUs, NCCL through CuPy (bootstrapped over MPI). No sockets or collectives of ember's own.

``mpiexec -n 4 python train.py`` runs the same script in 4 processes; a ``Trainer`` in each
(``distributed="auto"``, the default) trains one model data-parallel: every rank sees the whole
dataset order of each epoch and takes a fixed slice of every global batch (:func:`shard_bounds`), the
gradients are summed across ranks in rank order (:class:`GradientReducer`: the same bits on
every rank and on every run, whatever MPI's own algorithms would do), and the optimizer steps
the same update everywhere, so the replicas stay identical. A process not started by an MPI
launcher never imports mpi4py: :func:`rank` is 0 and :func:`size` is 1.

Example (a script run by ``mpiexec -n 2 python script.py``; alone it trains in one process):
    >>> from ember import Trainer, distributed
    >>> from ember.nn import MLP
    >>> from ember.datasets import load_digits
    >>> x, y = load_digits()
    >>> trainer = Trainer(MLP([64, 32, 10]))
    >>> _ = trainer.fit(x, y, epochs=2, batch_size=64, verbose=0)
    >>> distributed.rank(), distributed.size()
    (0, 1)

The reduction (per bucket of gradients, one per Linear layer, started as soon as that layer's
backward is done while the earlier layers' backward runs): each rank owns a contiguous chunk
of the bucket; a non-blocking all-to-all sends every rank the partials of its chunk, the owner
adds them in rank order, and a non-blocking all-gather returns the summed chunks to everyone.
That is the bandwidth of a ring all-reduce (``2 (P-1)/P`` of the gradient bytes in and out of
each rank) with a fixed order of additions.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import traceback
from typing import Optional, Sequence

import numpy as np

from ember import backend

__all__ = ["rank", "size", "launched_size", "world", "World", "GradientReducer", "NcclReducer",
           "shard_bounds", "duplicate_devices", "MISSING_MPI"]

#: what a user is told when mpi4py is needed and missing
MISSING_MPI = 'mpi4py is not installed: pip install "ember[mpi]" (mpi4py and the mpich wheel)'

# Set by the launchers (MPICH/Intel MPI hydra and Slurm's PMI, Open MPI, MVAPICH) in each process
# they start: read without importing mpi4py, so a single process never loads MPI.
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_THREAD_VARS = ("OMP_NUM_THREADS", "EMBER_NUM_THREADS")

_world: Optional["World"] = None


def launched_size() -> int:
    """The number of processes the MPI launcher started (1 when none started this one)."""
    for var in _SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return 1


def world(required: bool = False, where: str = "ember.distributed") -> Optional["World"]:
    """The MPI world of this process, initialized on first use: a :class:`World` when an MPI
    launcher started it (``required`` or more than one process), else None. ImportError naming
    ``pip install "ember[mpi]"`` when mpi4py is needed and missing; ValueError with
    ``required`` when no launcher started the process."""
    global _world
    if _world is not None:
        return _world
    n = launched_size()
    if n == 1 and not required:
        return None
    if n == 1 and not any(v in os.environ for v in _SIZE_VARS):
        raise ValueError(f"{where}: distributed='mpi' needs a process started by an MPI launcher "
                         "(mpiexec -n N python script.py, or ember train --processes N)")
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError(f"{where}: this process was started by an MPI launcher with {n} "
                          f"processes but {MISSING_MPI}") from None
    _world = World(MPI)
    return _world


def rank() -> int:
    """This process's rank (0 without MPI)."""
    w = world()
    return 0 if w is None else w.rank


def size() -> int:
    """The number of processes training together (1 without MPI)."""
    w = world()
    return 1 if w is None else w.size


class World:
    """MPI.COMM_WORLD and what ember needs of it. Created by :func:`world`."""

    def __init__(self, mpi):
        self.MPI = mpi
        self.comm = mpi.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        node = self.comm.Split_type(mpi.COMM_TYPE_SHARED, key=self.rank)
        #: this process's rank among those on its host, and how many share the host
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        if not any(v in os.environ for v in _THREAD_VARS):
            self._share_cores()

    def _share_cores(self) -> None:
        """Processes on one host split its cores: P ranks each with every core's thread would
        oversubscribe them (the user's OMP_NUM_THREADS / EMBER_NUM_THREADS wins)."""
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # (not on Linux)
            cores = os.cpu_count() or 1
        backend.set_num_threads(max(1, cores // self.local_size))

    # -- collectives of Python objects (small: setup, never per step) ------------------------
    def bcast(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def allgather(self, obj) -> list:
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def broadcast_arrays(self, arrays: Sequence) -> None:
        """Rank 0's values of ``arrays`` (C-contiguous NumPy or CuPy arrays) on every rank, in
        place (CuPy arrays through the host: this is setup, not a step)."""
        for a in arrays:
            if not a.size:
                continue
            if isinstance(a, np.ndarray):
                self.comm.Bcast(a, root=0)
            else:
                host = a.get()
                self.comm.Bcast(host, root=0)
                a.set(host)

    # -- GPUs ----------------------------------------------------------------------------
    #: the NCCL communicator once :meth:`use_gpu` made one (None: CPU training)
    nccl = None

    def use_gpu(self, where: str = "Trainer") -> int:
        """Make this rank's GPU current (local rank mod the host's GPUs), refuse two ranks on
        one GPU (on every rank, before any training), and create the NCCL communicator over
        MPI (rank 0's unique id broadcast). Returns the device index. Idempotent."""
        import cupy
        from cupy.cuda import nccl
        count = cupy.cuda.runtime.getDeviceCount()
        device = self.local_rank % count
        cupy.cuda.Device(device).use()
        if self.nccl is None:
            bus = cupy.cuda.Device(device).pci_bus_id
            problem = duplicate_devices(self.allgather((host_name(), bus)))
            if problem:
                raise ValueError(f"{where}: device='cuda' on {self.size} processes: {problem}")
            uid = self.bcast(nccl.get_unique_id() if self.rank == 0 else None)
            self.nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        return device

    def reducer(self, buckets: Sequence[Sequence]):
        """The gradient reducer of these buckets: NCCL's when :meth:`use_gpu` was called."""
        if self.nccl is not None:
            return NcclReducer(self, buckets)
        return GradientReducer(self, buckets)

    def abort(self, exc: BaseException) -> None:
        """Print ``exc`` (with this rank's traceback) on stderr and end the whole job: the other
        ranks would otherwise wait for this one in their next collective forever."""
        print(f"ember: rank {self.rank} of {self.size} failed; ending the job:\n" +
              "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
              file=sys.stderr, flush=True)
        # (the launcher forwards this rank's output through a pipe: give it that moment before
        # MPI_Abort has every process killed, or the message can be lost with them)
        time.sleep(0.5)
        self.comm.Abort(1)
        os._exit(1)  # (MPI_Abort may return while the launcher already tears the job down)

    def check_same(self, facts: dict, where: str = "fit") -> None:
        """Refuse (ValueError, on every rank) when the ranks' ``facts`` (name -> JSON value,
        e.g. a digest of the data) differ, naming what differs and on which ranks."""
        digests = {k: hashlib.blake2b(json.dumps(v, sort_keys=True, default=str).encode(),
                                      digest_size=12).hexdigest() for k, v in facts.items()}
        every = self.allgather(digests)
        for key in facts:
            values = [d.get(key) for d in every]
            if len(set(values)) > 1:
                odd = [r for r, v in enumerate(values) if v != values[0]]
                exc = ValueError(
                    f"{where}: the {self.size} processes differ in {key}: rank(s) "
                    f"{', '.join(map(str, odd))} disagree with rank 0; every process of a "
                    "data-parallel run must be given the same data, model and options")
                exc.raised_on_every_rank = True  # (no rank waits: no need to abort the job)
                raise exc


def shard_bounds(rows: int, rank_: int, size_: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of a batch of ``rows`` that rank ``rank_`` of ``size_`` takes:
    contiguous, in rank order, sizes differing by at most one (the first ranks take the extra)."""
    base, extra = divmod(rows, size_)
    start = rank_ * base + min(rank_, extra)
    return start, start + base + (1 if rank_ < extra else 0)


def duplicate_devices(devices: Sequence[tuple]) -> Optional[str]:
    """For ``devices[r]`` = (host, GPU id) of rank r: a message when two ranks share a GPU
    (NCCL refuses a communicator with one GPU twice), else None."""
    seen: dict = {}
    for r, dev in enumerate(devices):
        if tuple(dev) in seen:
            host, gpu = dev
            return (f"ranks {seen[tuple(dev)]} and {r} would both use GPU {gpu} on {host}: start "
                    "at most as many processes per host as it has GPUs (NCCL needs one GPU per "
                    "rank), or train on the CPU (device='cpu')")
        seen[tuple(dev)] = r
    return None


class GradientReducer:
    """Sums the gradients of a step across the ranks, in rank order, bucket by bucket.

    ``buckets`` are lists of Parameters, in the order their gradients become ready. Each
    bucket's gradients live in one flat buffer (the Parameters' ``grad`` arrays are views of
    it, so backward writes straight into what is sent, and the sums land back in place: no
    copy in or out). :meth:`start` (bucket ``b``; ``zero``: this rank contributes zeros)
    begins the bucket's all-to-all without waiting: chunk ``q`` of the buffer goes to rank
    ``q``. :meth:`finish` completes every bucket: this rank adds the ranks' partials of its
    chunk in rank order, each times its rank's share of the batch (``shares``), and an in-place
    all-gather returns every summed chunk to every gradient. It returns the step's scalars
    summed across ranks (float64, rank order)."""

    def __init__(self, world_: World, buckets: Sequence[Sequence]):
        self.world = world_
        mpi, p, r = world_.MPI, world_.size, world_.rank
        self.float = mpi.FLOAT
        self.buckets = [list(b) for b in buckets]
        self.plans = []
        for b in self.buckets:
            n = sum(int(q.data.size) for q in b)
            bounds = [shard_bounds(n, k, p) for k in range(p)]
            counts = [e - s for s, e in bounds]
            mine = counts[r]
            flat = np.zeros(n, np.float32)
            views, at = [], 0
            for q in b:
                k = int(q.data.size)
                views.append(flat[at:at + k].reshape(q.data.shape))
                at += k
            self.plans.append({
                "flat": flat, "views": views, "recv": np.empty((p, mine), np.float32),
                "tmp": np.empty(mine, np.float32), "counts": counts,
                "starts": [s for s, _ in bounds], "mine": mine,
                "recv_counts": [mine] * p, "recv_starts": [k * mine for k in range(p)]})
        self.pending: list = [None] * len(self.buckets)
        #: bytes this rank sends per step: every chunk but its own (all-to-all), its summed
        #: chunk to each other rank (all-gather), and the step's scalars
        self.bytes_sent = sum(4 * (pl["flat"].size - pl["mine"] + pl["mine"] * (p - 1))
                              for pl in self.plans) + 16 * (p - 1)

    def bind(self) -> None:
        """Make every bucket's gradients views of its buffer now (before a fused plan caches
        the gradient arrays it writes)."""
        for b in range(len(self.buckets)):
            self._in_place(b)

    def _in_place(self, b: int) -> None:
        """Make bucket ``b``'s gradients the views of its buffer again (copying them in)
        wherever something replaced a gradient array since the last step."""
        for q, view in zip(self.buckets[b], self.plans[b]["views"]):
            g = q.grad
            if g is not view:
                if g is None:
                    view[...] = 0
                else:
                    view[...] = g
                q.grad = view

    def start(self, b: int, zero: bool = False) -> None:
        pl = self.plans[b]
        self._in_place(b)
        if zero:
            pl["flat"][...] = 0
        self.pending[b] = self.world.comm.Ialltoallv(
            [pl["flat"], pl["counts"], pl["starts"], self.float],
            [pl["recv"], pl["recv_counts"], pl["recv_starts"], self.float])
        # MPI moves non-blocking collectives on only inside its calls: poke the earlier ones
        live = [q for q in self.pending if q is not None]
        if len(live) > 1:
            self.world.MPI.Request.Testall(live)

    def start_rest(self, zero: bool = False) -> None:
        """:meth:`start` every bucket not started yet."""
        for b in range(len(self.buckets)):
            if self.pending[b] is None:
                self.start(b, zero)

    def finish(self, scalars: Sequence[float], shares: Sequence[float]) -> list:
        comm, r = self.world.comm, self.world.rank
        self.start_rest(zero=True)  # (a rank with no rows this step contributes zeros)
        mine = np.asarray(scalars, dtype=np.float64)
        every = np.empty((self.world.size, len(mine)), np.float64)
        gathers = [comm.Iallgather(mine, every)]
        factors = [np.float32(f) for f in shares]
        for b, pl in enumerate(self.plans):
            self.pending[b].Wait()
            self.pending[b] = None
            recv, tmp = pl["recv"], pl["tmp"]
            s = pl["starts"][r]
            own = pl["flat"][s:s + pl["mine"]]  # (sent already: free to overwrite)
            np.multiply(recv[0], factors[0], out=own)
            for k in range(1, len(recv)):  # rank order: the same bits everywhere, every run
                np.multiply(recv[k], factors[k], out=tmp)
                own += tmp
            gathers.append(comm.Iallgatherv(self.world.MPI.IN_PLACE,
                                            [pl["flat"], pl["counts"], pl["starts"],
                                             self.float]))
        self.world.MPI.Request.Waitall(gathers)
        total = every[0].copy()
        for k in range(1, len(every)):
            total += every[k]
        return [float(v) for v in total]


class NcclReducer:
    """:class:`GradientReducer` on GPUs, with NCCL on a side stream (CuPy arrays).

    Per bucket (padded to ``P * chunk`` floats): the gradients are packed on the current
    stream; the side stream waits for them, then one grouped NCCL call sends chunk
    ``q`` to rank ``q`` and receives every rank's partial of this rank's chunk (the all-to-all
    as grouped send/recv); :meth:`finish` adds the partials in rank order (each times its
    rank's share) and all-gathers the
    summed chunks, on the side stream, and the current stream waits for it before the
    gradients are written back. The same bytes as a ring all-reduce, a fixed order of additions,
    and the backward of earlier layers overlapping the exchange (different streams).
    NOT YET RUN ON A GPU (no GPU was lent when it was written): tests/test_distributed.py has
    the GPU-marked checks that will."""

    def __init__(self, world_: World, buckets: Sequence[Sequence]):
        import cupy
        from cupy.cuda import nccl
        self.world, self.cupy, self.nccl = world_, cupy, nccl
        self.comm = world_.nccl
        self.stream = cupy.cuda.Stream(non_blocking=True)
        p = world_.size
        self.buckets = [list(b) for b in buckets]
        self.plans = []
        for b in self.buckets:
            n = sum(int(q.data.size) for q in b)
            chunk = -(-n // p)
            self.plans.append({"chunk": chunk, "send": cupy.zeros(p * chunk, cupy.float32),
                               "recv": cupy.empty((p, chunk), cupy.float32),
                               "sum": cupy.empty(p * chunk, cupy.float32)})
        self.pending = [False] * len(self.buckets)
        self.bytes_sent = sum(4 * pl["chunk"] * (p - 1) * 2 for pl in self.plans) + 16 * (p - 1)

    def start(self, b: int, zero: bool = False) -> None:
        cp, pl = self.cupy, self.plans[b]
        send, at = pl["send"], 0
        for q in self.buckets[b]:
            k = int(q.data.size)
            if zero or q.grad is None:
                send[at:at + k].fill(0)
            else:
                send[at:at + k] = q.grad.reshape(-1)
            at += k
        self.stream.wait_event(cp.cuda.get_current_stream().record())
        c, f32, s = pl["chunk"], self.nccl.NCCL_FLOAT32, self.stream.ptr
        if c:
            self.nccl.groupStart()
            for peer in range(self.world.size):
                self.comm.send(send.data.ptr + 4 * peer * c, c, f32, peer, s)
                self.comm.recv(pl["recv"].data.ptr + 4 * peer * c, c, f32, peer, s)
            self.nccl.groupEnd()
        self.pending[b] = True

    def bind(self) -> None:
        """(The gradients are copied into the send buffers on the GPU: nothing to bind.)"""

    def start_rest(self, zero: bool = False) -> None:
        for b in range(len(self.buckets)):
            if not self.pending[b]:
                self.start(b, zero)

    def finish(self, scalars: Sequence[float], shares: Sequence[float]) -> list:
        cp, r = self.cupy, self.world.rank
        self.start_rest(zero=True)
        mine = np.asarray(scalars, dtype=np.float64)
        every = np.empty((self.world.size, len(mine)), np.float64)
        gather = self.world.comm.Iallgather(mine, every)
        factors = [cp.float32(f) for f in shares]
        with self.stream:
            for pl in self.plans:
                c = pl["chunk"]
                if not c:
                    continue
                recv, out = pl["recv"], pl["sum"]
                own = out[r * c:(r + 1) * c]
                cp.multiply(recv[0], factors[0], out=own)
                for k in range(1, len(recv)):  # rank order
                    own += recv[k] * factors[k]
                self.comm.allGather(own.data.ptr, out.data.ptr, c, self.nccl.NCCL_FLOAT32,
                                    self.stream.ptr)
        cp.cuda.get_current_stream().wait_event(self.stream.record())
        for b, pl in enumerate(self.plans):
            at = 0
            for q in self.buckets[b]:
                k = int(q.data.size)
                if q.grad is None:
                    q.grad = cp.zeros_like(q.data)
                q.grad.reshape(-1)[...] = pl["sum"][at:at + k]
                at += k
            self.pending[b] = False
        gather.Wait()
        total = every[0].copy()
        for k in range(1, len(every)):
            total += every[k]
        return [float(v) for v in total]


def host_name() -> str:
    return socket.gethostname()
