"""Who slows an evaluation point, and what ends it? (issue 15, after bench.eval_order)

bench.eval_order found the sweep's POPE-shaped point slow on a fresh adapter (~74 samples/s over all three
timed passes) and fast (~108) in every later stage, each of which came after `model_only` (a batch
prepared by `prepare_text` in the main process, then `generate_prepared` on the main thread); the sweep
itself, which never calls either, is slow on every workload. Over each point's timed passes this bench
records the process's CPU seconds (all its threads, those that ended included) and by thread, each
preparation worker's CPU seconds, thread count and TOKENIZERS_PARALLELISM, and Python's collections.

Since the finding, `omnibench.pipeline.OneAhead` makes its first call on the caller's thread;
`--all-on-worker` restores calls on the worker thread only (`OneAhead.FIRST_ON_CALLER = False`), the
pipeline the finding was made with. `--sequence parts` (default) times the point on the fresh adapter,
then again after each of these, in order, so the first stage that is fast names what ends the slow state:
(a) `generate_prepared` of one batch prepared in this process, called on a new thread as the pipeline calls
it; (b) the vision towers (`image_features`) of one batch of worker-prepared items on the main thread; (c)
the padded prefill of that batch on the main thread; (d) its decode steps on the main thread (its prefill
on a new thread); (e) `generate_prepared` of worker-prepared items on the main thread. `--sequence first`
times only the fresh point and the same point again (as the pipeline is: is the slow state gone? with
`--all-on-worker --prep-workers 0`: is it there without the pool? with `--all-on-worker --switch-interval
0.0005`: is it contention for the interpreter lock?). Call I4's run (2026-12-03, before the change) had
the first version of this bench: fresh, again, after `prepare_text`, after `generate_prepared` on the main
thread (the last one fast).

    python -m bench.eval_cpu --out $OUT --sequence first
    python -m bench.eval_cpu --out $OUT --all-on-worker
    python -m bench.eval_cpu --out $OUT --all-on-worker --sequence first --prep-workers 0
    python -m bench.eval_cpu --out $OUT --all-on-worker --sequence first --switch-interval 0.0005
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

from omnibench import speed as speed_module
from omnibench.pipeline import OneAhead
from omnibench.speed import SweepConfig, _eval_speed_safely
from omnibench.speed_cli import registry_factory
from omnibench.tasks.pope import Pope

TICK = os.sysconf("SC_CLK_TCK")


def _stat(stat_path: str) -> list[str]:
    """A /proc stat file's fields after the command name (field 3, the state, is [0]; the parent pid [1])."""
    return Path(stat_path).read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def threads() -> dict[str, float]:
    """CPU seconds of this process's live threads, summed by name: Python's name for Python threads (the
    main thread, the pool's queue threads), the OS name for the rest. The pipeline's model thread ends with
    each pass, before the snapshot after it: its share is the process's total minus these."""
    import threading
    named = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            name = named.get(int(tid)) or Path(f"/proc/self/task/{tid}/comm").read_text().strip() + " (native)"
            out[name] = out.get(name, 0.0) + _cpu_seconds(_stat(f"/proc/self/task/{tid}/stat"))
        except OSError:  # the thread ended
            pass
    return out


def children() -> dict[int, dict]:
    """This process's child processes: CPU seconds (their threads included), thread count, tokenizer env."""
    me, out = str(os.getpid()), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = _stat(f"/proc/{pid}/stat")
            if fields[1] != me:
                continue
            status = Path(f"/proc/{pid}/status").read_text()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            out[int(pid)] = {"cpu_s": _cpu_seconds(fields),
                             "threads": int(status.split("Threads:")[1].split()[0]),
                             "TOKENIZERS_PARALLELISM": next((e.decode().split("=", 1)[1] for e in env
                                                             if e.startswith(b"TOKENIZERS_PARALLELISM=")), None)}
        except (OSError, IndexError):
            pass
    return out


class Probe:
    """Wraps the sweep's Timer: a snapshot before and after each timed pass, summed over the passes."""

    def __init__(self) -> None:
        self.threads: dict[str, float] = {}
        self.children_cpu, self.children_seen, self.gc_n, self.gc_s, self.wall = 0.0, {}, 0, 0.0, 0.0
        self.process_cpu = 0.0  # all threads, those that ended during a pass included (the model thread)
        self._gc_t = 0.0

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_t = time.perf_counter()
        else:
            self.gc_n += 1
            self.gc_s += time.perf_counter() - self._gc_t

    def __enter__(self) -> "Probe":
        self._saved = speed_module.Timer.__call__
        probe = self

        def timed(timer, fn):
            t0, k0, p0 = threads(), children(), _cpu_seconds(_stat("/proc/self/stat"))
            gc.callbacks.append(probe._gc)
            w = time.perf_counter()
            try:
                return probe._saved(timer, fn)
            finally:
                probe.wall += time.perf_counter() - w
                gc.callbacks.remove(probe._gc)
                t1, k1 = threads(), children()
                probe.process_cpu += _cpu_seconds(_stat("/proc/self/stat")) - p0
                for name, s in t1.items():
                    probe.threads[name] = probe.threads.get(name, 0.0) + s - t0.get(name, 0.0)
                probe.children_cpu += sum(v["cpu_s"] - k0.get(pid, {"cpu_s": 0.0})["cpu_s"] for pid, v in k1.items())
                probe.children_seen = {pid: {k: v for k, v in c.items() if k != "cpu_s"} for pid, c in k1.items()}

        speed_module.Timer.__call__ = timed
        return self

    def __exit__(self, *exc) -> None:
        speed_module.Timer.__call__ = self._saved

    def row(self) -> dict:
        top = sorted(self.threads.items(), key=lambda kv: -kv[1])[:8]
        kids = list(self.children_seen.values())
        return {"timed_wall_s": round(self.wall, 3), "threads_cpu_s": {k: round(v, 2) for k, v in top},
                "process_cpu_s": round(self.process_cpu, 2), "children_cpu_s": round(self.children_cpu, 2),
                "children": len(kids), "children_threads": sorted({c["threads"] for c in kids}),
                "children_TOKENIZERS_PARALLELISM": sorted({str(c["TOKENIZERS_PARALLELISM"]) for c in kids}),
                "gc_collections": self.gc_n, "gc_s": round(self.gc_s, 3)}


def parts(adapter, prep, batch) -> dict:
    """The calls that might end the slow state, each on one batch (see the module docstring)."""
    from concurrent.futures import ThreadPoolExecutor

    def on_new_thread(fn):
        def run():
            with torch.inference_mode():  # thread-local: as the pipeline's model thread runs its calls
                return fn()
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(run).result()

    def worker_items():
        return prep(batch)

    def vision():
        items = worker_items()
        adapter.model.image_features(torch.stack([it.pixels[0] for it in items]))

    def prefilled(items):
        feats = adapter.model.image_features(torch.stack([it.pixels[0] for it in items]))
        embeds, lengths = adapter.mmu_batch_embeddings([p.ids for p in items],
                                                       {i: feats[i:i + 1] for i in range(len(items))})
        return adapter.model.prefill(embeds, "mmu", lengths)

    def decode():
        state, logits = on_new_thread(lambda: prefilled(worker_items()))
        token = logits.argmax(-1)
        for _ in range(2):
            token = adapter.decode_step(state, token).argmax(-1)
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    return {"(a) generate_prepared of in-process items on a new thread":
                lambda: on_new_thread(lambda: adapter.generate_prepared(adapter.prepare_text(batch))),
            "(b) vision towers on the main thread": vision,
            "(c) padded prefill on the main thread": lambda: prefilled(worker_items()),
            "(d) decode steps on the main thread": decode,
            "(e) generate_prepared of worker items on the main thread":
                lambda: adapter.generate_prepared(worker_items())}


def main() -> None:
    from omnibench.prep import HostPrep, default_workers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="omnimamba")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--sequence", choices=["parts", "first"], default="parts")
    parser.add_argument("--prep-workers", type=int, default=None, help="default: the sweep's (8 on this GPU machine)")
    parser.add_argument("--switch-interval", type=float, default=None, help="sys.setswitchinterval, seconds")
    parser.add_argument("--all-on-worker", action="store_true", help="OneAhead.FIRST_ON_CALLER = False")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="full", help="tiny: a CPU smoke run of this script")
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    if args.all_on_worker:
        OneAhead.FIRST_ON_CALLER = False
    workers = args.prep_workers if args.prep_workers is not None else (None if args.device.startswith("cuda") else 2)
    cfg = SweepConfig(models=[args.model], device=args.device, preset=args.preset, eval_samples=args.samples,
                      point_timeout_s=60, full_generation_budget_s=0, prep_workers=workers)
    adapter = registry_factory(cfg)(args.model, "best")
    rows: list[dict] = []
    name = "_".join(["eval_cpu", args.model, args.sequence] + (["all_on_worker"] if args.all_on_worker else [])
                    + ([f"w{args.prep_workers}"] if args.prep_workers is not None else [])
                    + ([f"si{args.switch_interval:g}"] if args.switch_interval is not None else []))

    def stage(label: str) -> None:
        with Probe() as probe:
            point = _eval_speed_safely(adapter, "pope", cfg)
        rows.append({"stage": label, "status": point.get("status"), "samples_per_s": point.get("samples_per_second"),
                     "pass_samples_per_s": point.get("pass_samples_per_second"), **probe.row()})
        print(json.dumps(rows[-1]), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}.json").write_text(json.dumps(
            {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "argv": sys.argv,
             "first_on_caller": OneAhead.FIRST_ON_CALLER,
             "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
             "switch_interval": sys.getswitchinterval(),
             "env_TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM"), "stages": rows}, indent=1))

    stage("fresh adapter")
    if args.sequence == "first":
        stage("again, nothing between")
        return
    batch = Pope.throughput_requests(cfg.eval_batch)
    with HostPrep(adapter, workers if workers is not None else default_workers(cfg.device)) as prep:
        for label, call in parts(adapter, prep, batch).items():
            with torch.inference_mode():  # the model's calls make inference tensors (its graphs' buffers)
                call()
            stage(f"after {label}")


if __name__ == "__main__":
    main()
