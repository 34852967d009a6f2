"""``torch.distributed`` in one place: rank and world size, collectives on Python objects and tensors.

Every part of mmrobust that runs under ``torchrun`` goes through these helpers (evaluation shards
batches, the runner trains on rank 0 and broadcasts decisions, metrics reduce their states). Outside
an initialised process group each helper is the one-process identity: world size 1, rank 0, a
no-op barrier, ``value`` itself.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from mmrobust.errors import InputError

#: Trailing dimensions a gathered per-sample tensor may have (the shape exchange uses a fixed header).
MAX_TRAILING_DIMS = 8


def initialized() -> bool:
    """Whether a default ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size(group: Any = None) -> int:
    """World size of ``group`` (the default group if ``None``); 1 outside a process group."""
    return dist.get_world_size(group) if initialized() else 1


def rank() -> int:
    """Rank of this process in the default group; 0 outside a process group."""
    return dist.get_rank() if initialized() else 0


def is_main() -> bool:
    """Whether this is rank 0 (the process that writes files and prints)."""
    return rank() == 0


def ready(group: Any = None) -> bool:
    """Whether a process group is initialised with more than one rank in ``group``."""
    return initialized() and dist.get_world_size(group) > 1


def barrier() -> None:
    """Wait for every rank (no-op with one process)."""
    if world_size() > 1:
        dist.barrier()


def from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (so all ranks take the same branch); ``value`` itself outside a group."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` in rank order, on every rank (``[value]`` outside a group)."""
    world = world_size()
    if world == 1:
        return [value]
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, value)
    return parts


def gather_cat(t: Tensor, group: Any = None) -> Tensor:
    """All-gather (n_r, ...) tensors of every rank of ``group`` and concatenate them in rank order.

    Ranks may hold different numbers of rows (or none); the trailing shapes must agree. Bool
    tensors travel as uint8.

    Raises:
        InputError: ranks hold rows of different trailing shapes, or more than
            :data:`MAX_TRAILING_DIMS` trailing dimensions.
    """
    if t.dim() - 1 > MAX_TRAILING_DIMS:
        raise InputError(f"gather_cat: at most {MAX_TRAILING_DIMS} trailing dimensions, got {t.dim() - 1}")
    world = dist.get_world_size(group)
    header = torch.zeros(2 + MAX_TRAILING_DIMS, dtype=torch.long, device=t.device)
    header[0] = t.shape[0]
    header[1] = t.dim()
    header[2 : 2 + t.dim() - 1] = torch.tensor(t.shape[1:], dtype=torch.long)
    headers = [torch.zeros_like(header) for _ in range(world)]
    dist.all_gather(headers, header, group=group)
    trailing = [tuple(int(d) for d in h[2 : 2 + int(h[1]) - 1]) for h in headers]
    filled = [tr for h, tr in zip(headers, trailing, strict=True) if int(h[0]) > 0]
    if filled and any(tr != filled[0] for tr in filled):
        raise InputError(f"cat state: ranks hold per-sample values of different shapes {sorted(set(trailing))}")
    per = 1
    for d in t.shape[1:]:
        per *= int(d)
    rows = [int(h[0]) for h in headers]
    most = max(rows) * per
    transport_dtype = torch.uint8 if t.dtype == torch.bool else t.dtype
    flat = torch.zeros(most, dtype=transport_dtype, device=t.device)
    flat[: t.numel()] = t.reshape(-1).to(transport_dtype)
    bufs = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(bufs, flat, group=group)
    parts = [b[: r * per].reshape(r, *t.shape[1:]).to(t.dtype) for b, r in zip(bufs, rows, strict=True)]
    return torch.cat(parts, 0)


def all_reduce(t: Tensor, op: str, group: Any = None) -> Tensor:
    """``t`` reduced element-wise over the ranks of ``group`` (``op``: ``sum``, ``max`` or ``min``); a new tensor."""
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    transport = t.clone().to(torch.uint8) if t.dtype == torch.bool else t.clone()
    dist.all_reduce(transport, op=ops[op], group=group)
    return transport.to(t.dtype)


def init_from_env() -> bool:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, NCCL on GPU).

    Returns:
        True if this call initialised the group (the caller then calls :func:`shutdown`); False with
        one process or when a group already exists.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or initialized():
        return False
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def shutdown() -> None:
    """Destroy the default process group (no-op without one)."""
    if initialized():
        dist.destroy_process_group()


__all__ = [
    "MAX_TRAILING_DIMS",
    "all_reduce",
    "barrier",
    "from_main",
    "gather_cat",
    "gather_objects",
    "init_from_env",
    "initialized",
    "is_main",
    "rank",
    "ready",
    "shutdown",
    "world_size",
]
