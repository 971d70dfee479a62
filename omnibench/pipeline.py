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
    a new thread would otherwise start on cuda:0.

    The first call runs on the caller's thread, to its end, and the next `swap` returns it as it would a
    finished call of the worker's (its error included). Why: on an H200, a process whose model calls had
    all run on a worker thread answered POPE-shaped batches of OmniMamba at ~72 samples/s while the host
    prepared the next batch, and ~108 once its main thread had made one such call, for every later pass on
    new worker threads (reports/speed/README.md: bench.eval_order, bench.eval_cpu). The mechanism is not
    known; `FIRST_ON_CALLER = False` restores calls on the worker only, for benches that study it. Costs one
    batch's preparation that does not overlap a model call."""

    FIRST_ON_CALLER = True

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._job: tuple[Future, Any] | None = None
        self._called = False

    def swap(self, fn: Callable[[], Any] | None, carry: Any = None) -> tuple[Any, Any] | None:
        previous, self._job = self._job, None
        result = previous[0].result() if previous is not None else None
        if fn is not None:
            if self.FIRST_ON_CALLER and not self._called:
                self._job = (_called_here(fn), carry)
            else:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="omnibench-model",
                                                    initializer=_same_device())
                self._job = (self._pool.submit(fn), carry)
            self._called = True
        return (previous[1], result) if previous is not None else None

    def busy(self) -> bool:
        return self._job is not None


def _called_here(fn: Callable[[], Any]) -> Future:
    """A finished Future of `fn()` called on this thread: its result, or the exception it raised."""
    done: Future = Future()
    try:
        done.set_result(fn())
    except Exception as exc:
        done.set_exception(exc)
    return done


def _same_device() -> Callable[[], None]:
    """A thread initializer that makes the calling thread's current CUDA device current there too."""
    import torch
    device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return (lambda: torch.cuda.set_device(device)) if device is not None else (lambda: None)
