"""R2L's hard-example pool: the rays a student gets most wrong are fed to it again.

Each step, the top ``ratio`` fraction of the batch's fresh rays by per-ray loss join a bounded
pool; once the pool is full, the same number of rays is drawn from it (uniformly, without
replacement) into the next batch. The official code overwrites the slots it just drew from;
this pool is a FIFO ring (the oldest hard rays leave first), which keeps it independent of the
drawing and easy to test. A pool row is whatever the trainer packs into it, e.g.
``[origin (3), direction (3), target rgb (3)]``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def hardest(losses: Tensor, ratio: float) -> Tensor:
    """Indices of the ``int(ratio * N)`` largest of ``losses`` [N], highest first ([n] long)."""
    k = int(ratio * losses.shape[0])
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=losses.device)
    return torch.topk(losses, k, sorted=True).indices


class HardExamplePool:
    """A FIFO ring of at most ``capacity`` rows of ``width`` numbers.

    Attributes:
        rows: [capacity, width] storage (only the first ``size`` rows are valid).
        size: rows held.
    """

    def __init__(self, capacity: int, width: int, device="cpu", dtype=torch.float32):
        if capacity < 1:
            raise ValueError("HardExamplePool needs capacity >= 1")
        self.capacity = int(capacity)
        self.rows = torch.zeros(self.capacity, width, device=device, dtype=dtype)
        self.size = 0
        self._next = 0

    @property
    def full(self) -> bool:
        return self.size == self.capacity

    def push(self, rows: Tensor) -> None:
        """Append [n, width] rows, overwriting the oldest when full (n > capacity keeps the last ones)."""
        rows = rows.detach().to(self.rows.device, self.rows.dtype)[-self.capacity :]
        n = rows.shape[0]
        if n == 0:
            return
        idx = (self._next + torch.arange(n, device=self.rows.device)) % self.capacity
        self.rows[idx] = rows
        self._next = (self._next + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def add_hardest(self, rows: Tensor, losses: Tensor, ratio: float) -> int:
        """Push the top ``ratio`` fraction of ``rows`` [N, width] by ``losses`` [N]; returns how many."""
        idx = hardest(losses.detach(), ratio)
        self.push(rows[idx.to(rows.device)])
        return int(idx.numel())

    def draw(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """[min(n, size), width] rows drawn uniformly without replacement (a copy)."""
        n = min(int(n), self.size)
        perm = torch.randperm(self.size, generator=generator)[:n].to(self.rows.device)
        return self.rows[perm]
