"""One model call in flight on a worker thread while the caller prepares the next batch: the evaluation
runner's pipeline (omnibench.runner) and the speed sweep's evaluation points (omnibench.speed), which time
it, so this module is part of those points' code version."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable


class OneAhead:
    """At most one call in flight on a worker thread. `swap(None)` waits for the call in flight (raising
    what it raised) and returns (what it carries, its result); `swap(fn, carry)` then starts the next.
    The worker runs on the CUDA device current where it was started (under torchrun, this rank's GPU):
    a new thread would otherwise start on cuda:0."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._job: tuple[Future, Any] | None = None

    def swap(self, fn: Callable[[], Any] | None, carry: Any = None) -> tuple[Any, Any] | None:
        previous, self._job = self._job, None
        result = previous[0].result() if previous is not None else None
        if fn is not None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="omnibench-model",
                                                initializer=_same_device())
            self._job = (self._pool.submit(fn), carry)
        return (previous[1], result) if previous is not None else None

    def busy(self) -> bool:
        return self._job is not None


def _same_device() -> Callable[[], None]:
    """A thread initializer that makes the calling thread's current CUDA device current there too."""
    import torch
    device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return (lambda: torch.cuda.set_device(device)) if device is not None else (lambda: None)
