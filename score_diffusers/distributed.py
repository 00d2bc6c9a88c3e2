"""Splitting a command's work across the processes of `accelerate launch` or `torchrun`, and gathering the results.

The work is a list of batches (`batches`); process r of W takes batches r, r + W, r + 2W, ... (`Processes.share`), so
every batch holds the same items whatever W is, and a result that depends on its batch (a batched solve with one
adaptive step size) is the same with 1 and W processes. The processes share nothing while they work: no collective
operation runs inside the sampling or the ODE solve, so processes that take different numbers of solver steps never
wait on each other. Afterwards one `Processes.gather` hands every process's (small, picklable) results to the main
process, which writes the outputs.

The rank and world size come from the environment variables `RANK`, `WORLD_SIZE` and `LOCAL_RANK` that
`torchrun` and `accelerate launch` set; without them the command runs as one process and touches no
`torch.distributed` at all.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch

T = TypeVar("T")

# How long a process that has finished its share waits in the final gather for the others. A resumed run can leave
# one process nearly all the remaining work, so this is far longer than torch.distributed's 30-minute default; a
# process that fails makes the launcher stop the others, so a dead peer is not waited for.
GATHER_TIMEOUT = timedelta(days=7)
# Whether this module started torch.distributed's default process group (then it is gloo, with GATHER_TIMEOUT).
_started_default_group = False


def batches(count: int, batch_size: int) -> list[range]:
    """Indices 0 .. `count` − 1 in consecutive batches of `batch_size` (the last one shorter)."""
    return [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


@dataclass
class Processes:
    """This process's place among the processes of one run: `rank` of `world_size`, `local_rank` on its machine.

    Use `Processes.from_environment()`, `join()` before the work and `gather(result)` after it.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # The gloo group that `gather` uses, set by `join()`.
    _gather_group: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_environment(cls) -> Processes:
        """From `RANK`, `WORLD_SIZE` and `LOCAL_RANK`; one process where `WORLD_SIZE` is unset."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank = int(os.environ["RANK"])
        return cls(rank=rank, world_size=world_size, local_rank=int(os.environ.get("LOCAL_RANK", rank)))

    @property
    def is_main(self) -> bool:
        """Whether this is the process that writes the outputs (rank 0)."""
        return self.rank == 0

    def share(self, work: Sequence[T]) -> list[T]:
        """This process's items of `work`: items rank, rank + world_size, ..."""
        return list(work[self.rank::self.world_size])

    def default_device(self) -> torch.device:
        """CUDA device `local_rank` (modulo the number of devices) when CUDA is available, else the CPU."""
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if self.world_size == 1:
            return torch.device("cuda")
        return torch.device("cuda", self.local_rank % torch.cuda.device_count())

    def join(self) -> None:
        """Meet the other processes (nothing with one process), before the work; `gather` needs it.

        The first call in a process starts torch.distributed's default group on gloo (also on GPU machines: only
        small Python objects travel) and keeps it until the process exits, so that commands run one after the
        other in one process (`main(argv)` twice) meet again in it; a default group that the caller started (e.g.
        NCCL, with its own timeout) is left alone, and a gloo group is made beside it.
        """
        if self.world_size == 1 or self._gather_group is not None:
            return
        import torch.distributed as dist

        global _started_default_group
        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=self.rank, world_size=self.world_size, timeout=GATHER_TIMEOUT)
            # Left to the interpreter's exit, gloo's threads may be torn down while still running: a SIGABRT
            # ("terminate called without an active exception") after the work is done.
            atexit.register(dist.destroy_process_group)
            _started_default_group = True
        self._gather_group = (dist.group.WORLD if _started_default_group
                              else dist.new_group(backend="gloo", timeout=GATHER_TIMEOUT))

    def gather(self, result: T) -> list[T] | None:
        """Every process's `result`, in rank order, on the main process (`None` on the others). Call it once all of
        this process's work is done, from every process, after `join()`."""
        if self.world_size == 1:
            return [result]
        import torch.distributed as dist

        if self._gather_group is None:
            raise RuntimeError("Processes.gather needs Processes.join() first, from every process")
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(result, gathered, dst=0, group=self._gather_group)
        return gathered
