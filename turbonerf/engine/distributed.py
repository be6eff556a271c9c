"""Data-parallel training and sharded work on PyTorch's own distributed engine.

A run started by ``torchrun`` (or ``turbonerf ... --nproc N``, which starts torchrun) has one
process per rank; :func:`replicas_from_env` joins them into a process group (gloo on CPUs, nccl
on GPUs) and returns :class:`Replicas`, the one object the training loop and the sharded
commands talk to. A plain ``turbonerf`` process gets ``Replicas()`` (one rank), whose every
operation is a no-op, so the single-process code path is the same code.

How the replicas of one model stay identical (checked at the end of training by
:func:`state_fingerprint`):

- every rank builds the model from the same seed, and the torch global random generator is
  seeded the same on every rank: randomness that is not about *which rays* a rank trains
  (occupancy-grid probes, stratified jitter) is shared; only the batch generator is seeded with
  ``seed + rank`` (:func:`rank_seed`);
- gradients are averaged with one all-reduce over a flat buffer per dtype
  (:meth:`Replicas.average_gradients`), an explicit all-reduce rather than DDP's module wrapper,
  because the methods' numba hash-grid backward and their many entry points (forward, loss,
  callbacks) do not fit a wrapped ``forward``; identical gradients and identical optimizers give
  identical parameters;
- state that is not a parameter (occupancy and density grids, which each rank updates from its
  own samples) is broadcast from rank 0 every ``sync_every`` steps and before every checkpoint
  (:meth:`Replicas.broadcast_buffers`);
- decisions that would otherwise differ between ranks (a non-finite loss on one rank, the time
  budget, a checkpoint due by time) are taken on values all-reduced with MAX (:meth:`Replicas.agree`).

The learning-rate rule: gradients are averaged, not summed, and the learning rate is the one a
single process uses; N ranks with ``--batch-rays B`` therefore train like one process with
``--batch-rays N*B`` (same expected gradient, N times the rays per step).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from turbonerf.errors import TurboNerfError

RENDEZVOUS_FILE_VAR = "TURBONERF_RENDEZVOUS_FILE"
"""set by ``--nproc`` (:mod:`turbonerf.app.launch`): the processes meet through this file instead
of torchrun's TCP store"""
SPARSE_MIN_NUMEL = 1 << 18
"""2-D parameters this large average their gradients by rows (hash tables)"""
DEFAULT_TIMEOUT_S = 120.0
"""how long a collective of training waits for a silent rank before the job ends with an error
(a rank that dies is noticed at once: its sockets close and the launcher stops the others)"""
WORK_TIMEOUT_S = 6 * 3600.0
"""the same for sharded work (eval, render, bake, bench), whose ranks may finish their shares
minutes apart: a bench cell trains for as long as its budget"""


class ReplicaLost(TurboNerfError):
    """Another rank stopped (crashed, killed, or out of memory) while this one waited for it."""


@dataclass(frozen=True)
class Replicas:
    """The processes that train (or share the work of) one run: ``rank`` of ``world_size``.

    ``Replicas()`` is one process alone; every collective below then returns at once."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"
    """where the small tensors of collectives live (nccl needs them on the rank's GPU)"""

    @property
    def is_main(self) -> bool:
        """Rank 0 writes run.json, logs, checkpoints, results and draws the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend}

    def shard(self, n: int) -> list[int]:
        """The items of ``range(n)`` this rank handles: every ``world_size``-th, starting at ``rank``."""
        return list(range(self.rank, n, self.world_size))

    def span(self, n: int, align: int = 1) -> tuple[int, int]:
        """This rank's run ``[start, end)`` of ``range(n)``: consecutive runs of about equal length,
        in rank order, split only at multiples of ``align``."""
        chunks = -(-n // align)
        lo = self.rank * chunks // self.world_size
        hi = (self.rank + 1) * chunks // self.world_size
        return min(n, lo * align), min(n, hi * align)

    def maximum(self, t: Tensor) -> Tensor:
        """``t`` replaced in place by its element-wise maximum over the ranks (bool: logical or)."""
        if not self.distributed:
            return t
        buf = t.to(torch.uint8) if t.dtype == torch.bool else t
        _collective(lambda: dist.all_reduce(buf, op=dist.ReduceOp.MAX), "combine the shares")
        if buf is not t:
            t.copy_(buf.bool())
        return t

    def gather_to_main(self, t: Tensor) -> list[Tensor]:
        """Every rank's ``t`` (any shape; the same dtype and number of dimensions), in rank order, on
        rank 0; an empty list on the other ranks. Sent point to point, so rank 0 holds the whole
        and the others only their part (a pool of hundreds of MB)."""
        if not self.distributed:
            return [t]
        shapes = self.gather(list(t.shape))
        if not self.is_main:  # as bytes: every dtype travels the same way
            data = t.contiguous().reshape(-1).view(torch.uint8)
            if data.numel():
                _collective(lambda: dist.send(data, dst=0), "send its share")
            return []
        out = [t]
        for r in range(1, self.world_size):
            part = torch.empty(shapes[r], dtype=t.dtype, device=t.device)
            data = part.reshape(-1).view(torch.uint8)
            if data.numel():
                _collective(lambda: dist.recv(data, src=r), "receive a share")
            out.append(part)
        return out

    def agree(self, values: list[float]) -> list[float]:
        """The element-wise maximum of ``values`` over all ranks (flags, elapsed seconds)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        _collective(lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX), "agree on the step's flags")
        return t.tolist()

    def average_gradients(self, params: list[Tensor]) -> int:
        """Replace every parameter's gradient by its mean over the ranks; returns the bytes sent.

        Large tables (at least ``SPARSE_MIN_NUMEL`` elements, 2-D: hash grids, whose gradient
        touches only the rows a step's samples hit, ~20% of Instant-NGP's 6.1 M rows with 1024
        rays on lego) exchange only their non-zero rows (:func:`_average_rows`). The rest are
        packed into one flat buffer per dtype (a parameter without a gradient contributes zeros,
        so every rank packs the same layout) and all-reduced once each.
        """
        if not self.distributed:
            return 0
        sent = 0
        dense = []
        for p in params:
            if p.dim() == 2 and p.numel() >= SPARSE_MIN_NUMEL:
                sent += _average_rows(p, self.world_size)
            else:
                dense.append(p)
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for p in dense:
            by_dtype.setdefault(p.dtype, []).append(p)
        for group in by_dtype.values():
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
            _collective(lambda: dist.all_reduce(flat, op=dist.ReduceOp.SUM), "average the gradients")
            flat.div_(self.world_size)
            sent += 2 * (self.world_size - 1) * flat.numel() * flat.element_size() // self.world_size  # a ring all-reduce
            offset = 0
            for p in group:
                n = p.numel()
                p.grad = flat[offset : offset + n].view_as(p)
                offset += n
        return sent

    def broadcast_buffers(self, module: nn.Module) -> int:
        """Copy every buffer of ``module`` from rank 0 to the other ranks; returns the bytes sent."""
        if not self.distributed:
            return 0
        sent = 0
        for buf in module.buffers():
            _collective(lambda: dist.broadcast(buf, src=0), "share the grids")
            sent += buf.numel() * buf.element_size()
        return sent

    def broadcast_parameters(self, module: nn.Module) -> None:
        """Copy every parameter of ``module`` from rank 0 (so replicas start identical even where a
        model's initialisation is not seeded)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for p in module.parameters():
                _collective(lambda: dist.broadcast(p.data, src=0), "share the initial parameters")

    def gather(self, obj: object) -> list[object]:
        """``obj`` of every rank, in rank order (small JSON-like objects only)."""
        if not self.distributed:
            return [obj]
        out: list[object] = [None] * self.world_size
        _collective(lambda: dist.all_gather_object(out, obj), "gather results")
        return out

    def barrier(self) -> None:
        if self.distributed:
            _collective(dist.barrier, "wait for the other ranks")


def _average_rows(p: Tensor, world_size: int) -> int:
    """Average the gradient of table ``p`` [rows, features] over the ranks by exchanging only its
    non-zero rows (indices + values, padded to the largest rank's count); every rank adds the
    parts in rank order, so all get the same bits. Where that would move more than a dense ring
    all-reduce (:func:`rows_pay`, decided from the exchanged counts, so alike on every rank) the
    table is all-reduced whole. Returns the bytes this rank sent (the ring's share for a dense one)."""
    grad = p.grad if p.grad is not None else torch.zeros_like(p)
    idx = grad.ne(0).any(dim=1).nonzero().squeeze(1)
    dev = grad.device
    counts = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world_size)]
    _collective(lambda: dist.all_gather(counts, torch.tensor([idx.numel()], device=dev)), "exchange gradient sizes")
    m = int(max(c.item() for c in counts))
    row_bytes = p.shape[1] * grad.element_size()
    if not rows_pay(m, world_size, row_bytes, p.numel() * grad.element_size()):  # every rank decides alike
        _collective(lambda: dist.all_reduce(grad, op=dist.ReduceOp.SUM), "average the gradients")
        p.grad = grad.div_(world_size)
        return 2 * (world_size - 1) * p.numel() * grad.element_size() // world_size
    idx_pad = torch.zeros(m, dtype=torch.int32, device=dev)
    idx_pad[: idx.numel()] = idx.to(torch.int32)
    val_pad = torch.zeros(m, p.shape[1], dtype=grad.dtype, device=dev)
    val_pad[: idx.numel()] = grad[idx]
    idx_parts = [torch.empty_like(idx_pad) for _ in range(world_size)]
    val_parts = [torch.empty_like(val_pad) for _ in range(world_size)]
    _collective(lambda: dist.all_gather(idx_parts, idx_pad), "exchange gradient rows")
    _collective(lambda: dist.all_gather(val_parts, val_pad), "exchange gradient rows")
    out = torch.zeros_like(grad)
    for c, i, v in zip(counts, idx_parts, val_parts):
        n = int(c.item())
        out.index_add_(0, i[:n].long(), v[:n])
    p.grad = out.div_(world_size)
    return m * (4 + row_bytes) * (world_size - 1)


def rows_pay(max_rows: int, world_size: int, row_bytes: int, table_bytes: int) -> bool:
    """Whether exchanging rows beats a dense all-reduce of the whole table: an all-gather of the
    largest rank's ``max_rows`` rows (+ a 4-byte index each) moves (N-1) x that per rank, a ring
    all-reduce 2 (N-1)/N x the table. On lego with 512 rays per rank about 22% of Instant-NGP's
    rows are touched (12 bytes each against 8 in the dense table), so rows pay up to 5 ranks."""
    return max_rows * (4 + row_bytes) * world_size < 2 * table_bytes


def _collective(op, what: str) -> None:
    """Run a collective; a rank that went away becomes a one-line :class:`ReplicaLost`."""
    try:
        op()
    except (RuntimeError, dist.DistError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ReplicaLost(
            f"another process of this run stopped while this one waited to {what} ({first[:160]}); "
            "the job ends here: the last checkpoint is kept, continue with --resume (any number of processes)"
        ) from None


def launched_as_replica() -> bool:
    """True in a process started by torchrun (torch.distributed.run) or by ``--nproc``."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def replicas_from_env(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> Replicas:
    """Join the process group torchrun set up (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...) or
    ``--nproc`` did (the same variables, and a rendezvous file), or return ``Replicas()`` when
    this process is alone.

    The backend is gloo on CPUs and nccl on CUDA devices; a collective that waits longer than
    ``timeout_s`` for another rank fails instead of hanging.
    """
    if not launched_as_replica():
        return Replicas()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return Replicas()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_available():
        raise TurboNerfError("this build of torch has no torch.distributed: run one process")
    if not dist.is_initialized():
        kwargs = {"device_id": torch.device("cuda", local)} if device.type == "cuda" else {}
        if RENDEZVOUS_FILE_VAR in os.environ:
            kwargs |= {"init_method": f"file://{os.environ[RENDEZVOUS_FILE_VAR]}", "rank": rank, "world_size": world}
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    if device.type == "cpu":
        _share_numba_threads()
    return Replicas(rank=rank, world_size=world, local_rank=local, backend=backend,
                    device=f"cuda:{local}" if device.type == "cuda" else "cpu")


def _share_numba_threads() -> None:
    """Give numba's parallel kernels (hash grid, tree marcher) no more threads than torch has:
    torchrun gives each process one (OMP_NUM_THREADS), while numba would start one per core in
    every process (on 2 cores a lego bake shared by 2 processes took 119 s with that, 79 s without)."""
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def device_for_rank(device: torch.device, replicas: Replicas) -> torch.device:
    """On a multi-GPU node each rank uses its own GPU (``cuda:LOCAL_RANK``); CPUs are shared."""
    if device.type == "cuda" and replicas.distributed and device.index is None:
        torch.cuda.set_device(replicas.local_rank)
        return torch.device("cuda", replicas.local_rank)
    return device


@contextmanager
def joined(device: torch.device, replicas: Replicas | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Replicas]:
    """The processes a command runs with: ``replicas`` when the caller gives them (it keeps and
    closes them: several commands can run in one process group, and ``Replicas()`` runs alone,
    as a bench cell does), else those torchrun or ``--nproc`` started (:func:`replicas_from_env`,
    left again at the end)."""
    if replicas is not None:
        yield replicas
        return
    replicas = replicas_from_env(device, timeout_s)
    try:
        yield replicas
    finally:
        close(replicas)


def close(replicas: Replicas) -> None:
    """Leave the process group (at the end of a command)."""
    if replicas.distributed and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The batch generator's seed of ``rank``: rank 0 keeps ``seed`` (a 1-process run draws what it always drew)."""
    return seed + 1_000_003 * rank


def state_fingerprint(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, shapes, dtypes and exact bytes): equal on two
    replicas if and only if their states are bit-for-bit identical."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
