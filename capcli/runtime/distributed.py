"""torchrun / DistributedDataParallel support: gloo on CPU, NCCL on CUDA, rank 0 writes.

Every collective has a finite timeout (``CAPCLI_DIST_TIMEOUT`` seconds, default 300), so a rank
that dies or stalls stops the others with one line instead of leaving them waiting for ever;
:func:`collective_errors` turns what the backend raises then into that line. Work is shared by
whole batches (:func:`my_batches`), so every rank runs the same number of collectives.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from capcli.errors import CapcliError, first_line

TIMEOUT_VARIABLE = "CAPCLI_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
# what gloo and NCCL say when a peer died (its sockets closed) or did not answer in time
_LOST = ("connection closed by peer", "connection reset", "broken pipe", "connection refused")
_TIMED_OUT = ("timed out", "timeout", "watchdog")


class RankLost(CapcliError):
    """Another rank died or stopped answering; this one stops too. The backend's threads still
    wait on the lost peer, and their destructors abort the process at a normal exit
    ("terminate called without an active exception", exit -6), so the process ends at once."""

    ends_process_at_once = True


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""
    timeout: float = DEFAULT_TIMEOUT

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """Where this rank's collective tensors live (NCCL needs them on the rank's GPU)."""
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


def dist_timeout() -> float:
    """Seconds a collective may wait for the other ranks (``CAPCLI_DIST_TIMEOUT``).

    Raises:
        CapcliError: the variable is not a positive number.
    """
    raw = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise CapcliError(f"{TIMEOUT_VARIABLE}={raw!r}: give the seconds a rank may wait for the others, "
                          f"a positive number (default {DEFAULT_TIMEOUT:.0f})")
    return seconds


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when started by torchrun (WORLD_SIZE > 1), with a finite timeout."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = "nccl" if device.type == "cuda" else "gloo"
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")), backend, dist_timeout())
    if not dist.is_initialized():
        with collective_errors(info):
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=info.timeout))
    return info


def _is_peer_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or any(marker in text for marker in _LOST + _TIMED_OUT)


def _others(info: DistInfo) -> str:
    return f"rank {1 - info.rank}" if info.world == 2 else "another rank"


@contextlib.contextmanager
def collective_errors(info: DistInfo) -> Iterator[None]:
    """Turns a collective that failed because another rank died or stalled into one line.

    Raises:
        RankLost: naming the rank that was lost (with two ranks) and the backend's own words.
    """
    try:
        yield
    except RuntimeError as exc:
        if not info.enabled or not _is_peer_failure(exc):
            raise
        # the backend's first sentence, without gloo's source location
        what = re.sub(r"^\[[^\]]*\] *", "", first_line(exc, 300)).split(". ")[0][:160]
        if any(marker in first_line(exc, 300).lower() for marker in _TIMED_OUT):
            reason = f"{_others(info)} did not answer within {info.timeout:g} s ({TIMEOUT_VARIABLE})"
        else:
            reason = f"lost {_others(info)}"
        raise RankLost(f"rank {info.rank} of {info.world}: {reason}, so every rank stops; the last saved "
                       f"checkpoint is kept ({what})") from None


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def my_batches(count: int, info: DistInfo) -> range:
    """The batches (of ``count``) this rank works on: every ``world``-th, so batch k is rank k % world's."""
    return range(info.rank, count, info.world)


def rounds(count: int, info: DistInfo) -> int:
    """How many batches the busiest rank has: the rounds of collectives every rank takes part in."""
    return -(-count // info.world)


def padded_share(order: list[int], info: DistInfo) -> list[int]:
    """This rank's share of ``order``, as ``DistributedSampler`` deals it: the list is padded by
    repeating its first items up to a multiple of ``world``, so every rank gets the same count."""
    if not info.enabled:
        return order
    pad = -len(order) % info.world
    padded = order + (order * info.world)[:pad]  # (world · ceil(n / world),)
    return padded[info.rank::info.world]


def max_over_ranks(value: int, info: DistInfo) -> int:
    """The largest of every rank's ``value`` (a collective: every rank must call it)."""
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def sum_over_ranks(values: list[float], info: DistInfo) -> list[float]:
    """Every rank's ``values`` added up, on every rank (a collective)."""
    if not info.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def from_main(value, info: DistInfo):
    """Rank 0's ``value`` on every rank (a picklable object), so ranks decide alike."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=info.device)
    return box[0]


def gather_lists(items: list, info: DistInfo) -> list:
    """Every rank's ``items`` joined, in rank order, on every rank."""
    if not info.enabled:
        return items
    parts: list = [None] * info.world
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def gather_on_main(tensor: torch.Tensor, info: DistInfo) -> list[torch.Tensor] | None:
    """Every rank's ``tensor`` (all the same shape), in rank order, on rank 0; None elsewhere."""
    if not info.enabled:
        return [tensor]
    tensor = tensor.to(info.device)
    parts = [torch.empty_like(tensor) for _ in range(info.world)] if info.is_main else None
    dist.gather(tensor, parts, dst=0)
    return parts


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper (what checkpoints store); ``--compile`` compiles the
    decoder's step in place, which wraps nothing."""
    return getattr(module, "module", module)
