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


class GraphPool:
    """The memory pool one model's decode graphs share. torch frees a pool as soon as no graph of it is
    alive, and a pool id cannot be recorded into after that (an allocator assertion): a graph dropped
    when the KV buffers grow, or with the decoder of a finished prefill, would strand the next capture.
    So the pool keeps its newest graph alive and records every new graph into that graph's pool."""

    def __init__(self) -> None:
        self._anchor: torch.cuda.CUDAGraph | None = None

    def capture(self, record: Callable[[], T], warm_up: Callable[[], Any],
                device: torch.device | str) -> tuple[torch.cuda.CUDAGraph, T]:
        graph, out = capture(record, warm_up, device, self._anchor.pool() if self._anchor is not None else None)
        self._anchor = graph
        return graph, out


def capture(record: Callable[[], T], warm_up: Callable[[], Any], device: torch.device | str,
            pool: Any = None) -> tuple[torch.cuda.CUDAGraph, T]:
    """(graph, outputs): `warm_up()` run WARMUP_CALLS times on a side stream, then `record()` recorded
    once (a recording runs nothing: `record` must leave no trace that replays would not repeat). `pool`:
    a live graph's `pool()` to share its memory (see GraphPool). The outputs live in the pool: copy them
    out before another graph of the same pool replays."""
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
