"""Process groups: one process by default, torchrun + DistributedDataParallel when launched so.

``torchrun --nproc-per-node N -m clbench.cli run ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; :func:`current` then joins the
process group once per process (gloo on CPU, NCCL on CUDA, one GPU per process). Without
those variables :class:`SingleProcess` makes every helper an identity, so the trainer has one
code path. What is continual-learning specific (docs/protocol.md, "Several processes"): the model is
re-wrapped every task (its parameters change), prompt pools leave parameters unused in a
step, statistics that methods gather are summed over ranks, evaluation shards the test set
without padding, and only rank 0 writes.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable
from typing import Any

import torch

from ..errors import ConfigError


class SingleProcess:
    """The world of one process: reductions are identities, this rank writes."""

    rank = 0
    local_rank = 0
    world_size = 1
    is_main = True

    def device(self, device: torch.device) -> torch.device:
        """The compute device of this rank, given the configured one."""
        return device

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks (in place) and return it."""
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """The rows of ``tensor`` from every rank, concatenated in rank order (ranks may hold
        different numbers of rows)."""
        return tensor

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module that training steps call (DDP wraps it per task)."""
        return module

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a JSON-like or picklable value)."""
        return obj

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        return [obj]

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on some rank."""
        return flag

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` over ranks (steps not driven by DDP)."""

    def shard(self, n: int) -> range:
        """Indices of ``n`` samples this rank evaluates: every sample exactly once over the
        ranks, no padding (padding duplicates would bias accuracy)."""
        return range(self.rank, n, self.world_size)


class Distributed(SingleProcess):
    """A rank of a torchrun launch (environment ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self._dist = dist
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.is_main = self.rank == 0
        self.device_type = device.type
        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise ConfigError(
                    f"Rank {self.rank} needs GPU {self.local_rank} but this node has "
                    f"{torch.cuda.device_count()}. Start at most one process per GPU "
                    f"(torchrun --nproc-per-node={torch.cuda.device_count()}).")
            torch.cuda.set_device(self.local_rank)
        elif device.type != "cpu":
            raise ConfigError(f"Multi-process runs support CPU (gloo) and CUDA (NCCL), not '{device}'.")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def device(self, device: torch.device) -> torch.device:
        if device.type != self.device_type:
            raise ConfigError(
                f"This torchrun launch joined its process group for '{self.device_type}'; a run "
                f"on '{device.type}' cannot share it. Launch runs on different devices separately.")
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        self._dist.all_reduce(tensor)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        sizes = self.gather_objects(len(tensor))
        padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
        padded[:len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        self._dist.all_gather(parts, padded)
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        # Built once per task, after the method grew: DDP fixes its parameter list here and
        # broadcasts rank 0's parameters and buffers. Prompt pools leave parameters unused in
        # a step, hence find_unused_parameters; ViTs have no batch statistics to sync per step.
        ids = [self.local_rank] if self.device_type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True,
                                       forward_sync_buffers=False)

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        device = torch.device("cuda", self.local_rank) if self.device_type == "cuda" else torch.device("cpu")
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        self._dist.all_reduce(value)
        return bool(value.item() > 0)

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._dist.all_reduce(flat)
        flat.div_(self.world_size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()


_CURRENT: SingleProcess | None = None


def launched_with_torchrun() -> bool:
    """True in a process started by torchrun with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def is_main_process() -> bool:
    """False on ranks other than 0 of a torchrun launch (they print and write nothing)."""
    return int(os.environ.get("RANK", "0")) == 0


def current(device: torch.device) -> SingleProcess:
    """This process's world: joins the torchrun process group on first use (once per process)."""
    global _CURRENT
    if _CURRENT is None:
        if launched_with_torchrun():
            _CURRENT = Distributed(device)
            atexit.register(_CURRENT.close)  # leave the process group cleanly at exit
        else:
            _CURRENT = SingleProcess()
    return _CURRENT
