"""Splitting the lens over torchrun ranks: each rank takes every world-th sequence and the
per-sequence accumulators are summed (ranks' rows do not overlap, so the sum is exact).

    torchrun --nproc_per_node=8 -m causalshift analyze --model google/gemma-2-2b
"""

from __future__ import annotations

import os

import torch
import torch.distributed as td

from causalshift.lens.engine import LensAccumulator, LensRun


def init() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not td.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        td.init_process_group(backend=backend)
    if td.is_initialized():
        return td.get_rank(), td.get_world_size()
    return 0, 1


def local_device(device: str) -> str:
    """cuda -> cuda:LOCAL_RANK under torchrun; anything else unchanged."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def reduce_run(acc: LensAccumulator, run: LensRun) -> tuple[int, int, float]:
    """Sum accumulators across ranks in place; returns (positions, excluded, max seconds)."""
    stats = torch.tensor(
        [run.num_positions, run.excluded_projection_positions, run.seconds], dtype=torch.float64
    )
    if td.is_initialized() and td.get_world_size() > 1:
        device = "cuda" if td.get_backend() == "nccl" else "cpu"
        for t in (acc.sums, acc.counts):
            buf = t.to(device)
            td.all_reduce(buf)
            t.copy_(buf.cpu())
        head = stats[:2].to(device)
        td.all_reduce(head)
        slowest = stats[2:].to(device)
        td.all_reduce(slowest, op=td.ReduceOp.MAX)
        stats = torch.cat([head.cpu(), slowest.cpu()])
    return int(stats[0]), int(stats[1]), float(stats[2])


def finish() -> None:
    """Leave the process group, if any."""
    if td.is_initialized():
        td.destroy_process_group()
