"""Data-parallel sharding under torchrun / accelerate launch: each rank takes every world-th sample,
writes its own cache file, and rank 0 gathers through the shared output folder after a barrier."""
from __future__ import annotations

import datetime
import os


def rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init(device: str) -> None:
    _, world = rank_world()
    if world > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if backend == "nccl":  # NCCL's barrier runs on the current device: make it this rank's own
                import torch
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            # Ranks wait for the slowest one at the gather; a long benchmark must not time out there.
            dist.init_process_group(backend, timeout=datetime.timedelta(hours=48))


def local_device(device: str) -> str:
    """`cuda` under torchrun means this rank's own GPU."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def barrier() -> None:
    _, world = rank_world()
    if world > 1:
        import torch.distributed as dist
        dist.barrier()


def finish() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
