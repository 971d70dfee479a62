"""One CUDA-graph capture for every decode step of every family (OmniMamba's recurrent step, the static
KV-cache step of Show-o and JanusFlow), as mamba-ssm's `utils/generation.py` captures its decode: a few
warm-up calls on a side stream first (Triton autotuning and lazy allocations happen there, never in a
recording), then one recording drawing from a memory pool that a model shares across all its graphs
(every batch size, every prefill), so graphs for many shapes cost the memory of the largest."""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch

T = TypeVar("T")
WARMUP_CALLS = 2


def graph_pool(device: torch.device | str) -> Any:
    """A memory-pool handle to share among one model's graphs; None off CUDA (nothing is captured there)."""
    return torch.cuda.graph_pool_handle() if torch.device(device).type == "cuda" else None


def capture(record: Callable[[], T], warm_up: Callable[[], Any], device: torch.device | str,
            pool: Any = None) -> tuple[torch.cuda.CUDAGraph, T]:
    """(graph, outputs): `warm_up()` run WARMUP_CALLS times on a side stream, then `record()` recorded
    once (a recording runs nothing: `record` must leave no trace that replays would not repeat). The
    outputs live in the graph's pool: copy them out before another graph of the same pool replays."""
    device = torch.device(device)
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP_CALLS):
            warm_up()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = record()
    return graph, out
