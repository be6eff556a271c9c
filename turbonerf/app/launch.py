"""``--nproc N``: run a turbonerf command as N processes on this machine.

The N processes are started by torch's own worker launcher (the one torchrun's agent uses,
``torch.distributed.elastic.multiprocessing``), each with the ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` variables torchrun would give it. They meet through a file in a private temporary
folder (a ``FileStore``) rather than torchrun's TCP store, which listens on every interface of
the machine; their gloo sockets are on the loopback interface. So ``--nproc`` opens nothing
beyond 127.0.0.1. When a process fails, the others are stopped (SIGTERM: each saves what it must)
and the command fails, naming the rank.

For several machines call torchrun yourself (its rendezvous store then listens on the port of
``--rdzv-endpoint``, as multi-node training needs)::

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29400 -m turbonerf -- train ...
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from turbonerf.engine.distributed import RENDEZVOUS_FILE_VAR, launched_as_replica
from turbonerf.errors import TurboNerfError

SHARDED_COMMANDS = ("train", "eval", "render", "distill", "bake", "bench")
STOP_GRACE_S = 60
"""after Ctrl-C, how long the processes get to write their checkpoints before they are killed"""


def pop_nproc(args: list[str]) -> tuple[int, list[str]]:
    """(N of ``--nproc N`` / ``--nproc=N``, or 1; the arguments without it)."""
    out, n, it = [], 1, iter(args)
    for a in it:
        if a == "--nproc" or a.startswith("--nproc="):
            value = a.split("=", 1)[1] if "=" in a else next(it, "")
            try:
                n = int(value)
            except ValueError:
                raise TurboNerfError(f"--nproc takes a number of processes, got '{value}'") from None
            if n < 1:
                raise TurboNerfError(f"--nproc must be at least 1, got {n}")
        else:
            out.append(a)
    return n, out


def replica_env(rank: int, nproc: int, rendezvous: Path) -> dict[str, str]:
    """The environment of local process ``rank`` of ``nproc`` (torchrun's variables, plus the
    rendezvous file, gloo on loopback, and the cores shared out between the processes, for
    torch and for numba's kernels alike)."""
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return {
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
        "GROUP_RANK": "0", RENDEZVOUS_FILE_VAR: str(rendezvous), "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": threads, "NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS", threads),
    }


def launch_local(nproc: int, args: list[str]) -> int:
    """Run ``turbonerf ARGS`` as ``nproc`` processes on this machine; returns the exit status
    (0, or 1 when a process failed: its own message is printed above, and this names it)."""
    if not args or args[0] not in SHARDED_COMMANDS:
        raise TurboNerfError(f"--nproc works with {', '.join(SHARDED_COMMANDS)}")
    if launched_as_replica():
        raise TurboNerfError("--nproc inside torchrun: give the number of processes to torchrun only")
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std, start_processes

    with tempfile.TemporaryDirectory(prefix="turbonerf-nproc-") as tmp:
        rendezvous = Path(tmp) / "rendezvous"
        procs = start_processes(
            name="turbonerf",
            entrypoint=sys.executable,
            args={r: ("-m", "turbonerf", *args) for r in range(nproc)},
            envs={r: replica_env(r, nproc, rendezvous) for r in range(nproc)},
            logs_specs=DefaultLogsSpecs(log_dir=str(Path(tmp) / "logs"), redirects=Std.NONE, tee=Std.NONE),
        )
        try:
            result = procs.wait(period=0.2)
        except KeyboardInterrupt:  # the processes got the same Ctrl-C and save their checkpoints
            result = procs.wait(timeout=STOP_GRACE_S, period=0.2)
            procs.close()
            return 130
    if result is not None and result.is_failed():
        failures = ", ".join(f"rank {r} (exit code {f.exitcode})" for r, f in sorted(result.failures.items()))
        print(f"error: {args[0]} with {nproc} processes failed: {failures}", file=sys.stderr)
        return 1
    return 0
