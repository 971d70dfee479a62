"""Host-side preparation of understanding requests (image resize, tokenizing) in worker processes.

An adapter's `prepare_text` runs on the main thread while the device answers the batch before
(`omnibench.pipeline.OneAhead`). Done there, its PIL and tokenizer work competes with the model thread's
Python (kernel launches) for the interpreter and for one core; `HostPrep` instead hands each batch's
requests, split in chunks, to `workers` spawned processes running the adapter's `preprocessor()` -- the
same function `prepare_text` runs, so the items are identical -- as a DataLoader's workers would. The
workers import the adapter's module once (spawn: no CUDA state or threads are forked) and keep the
function they were started with."""
from __future__ import annotations

import os
from dataclasses import replace
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Sequence

from omnibench.protocol import ModelAdapter, Prepared, Request

_FN: Callable[[Sequence[Request]], list[Any]] | None = None


def _install(fn: Callable[[Sequence[Request]], list[Any]]) -> None:
    global _FN
    _FN = fn
    try:  # the worker's own torch ops stay on one thread: the workers are the parallelism
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass


def _run(requests: Sequence[Request]) -> list[Any]:
    """The chunk's items; a `Prepared` goes back without its request (the caller has it: the images
    need not be pickled twice)."""
    assert _FN is not None, "worker started without a preprocessor"
    return [replace(item, request=None) if isinstance(item, Prepared) else item for item in _FN(requests)]


def default_workers(device: str) -> int:
    """On a GPU: up to 8 processes, leaving half the cores to the main and model threads; on CPU none
    (the model itself needs the cores)."""
    if not device.startswith("cuda"):
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // 2))


class HostPrep:
    """`prep(requests)` -> the adapter's prepared items, in order; with `workers` > 0 and an adapter whose
    `preprocessor()` is not None, computed in that many processes, else by `prepare_text` here."""

    def __init__(self, adapter: ModelAdapter, workers: int) -> None:
        self.adapter = adapter
        self.fn = adapter.preprocessor() if workers > 0 else None
        self.workers = workers if self.fn is not None else 0
        self._pool: ProcessPoolExecutor | None = None

    def __call__(self, requests: Sequence[Request]) -> list[Any]:
        if self.fn is None or len(requests) <= 1:
            return self.adapter.prepare_text(requests)
        if self._pool is None:
            import torch.multiprocessing as mp  # its pickler moves tensors through shared memory
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=_install, initargs=(self.fn,))
        n = min(self.workers, len(requests))
        size = -(-len(requests) // n)
        chunks = [list(requests[i:i + size]) for i in range(0, len(requests), size)]
        out: list[Any] = []
        for part in [self._pool.submit(_run, c) for c in chunks]:
            out.extend(part.result())
        return [replace(item, request=req) if isinstance(item, Prepared) else item for item, req in zip(out, requests)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "HostPrep":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
