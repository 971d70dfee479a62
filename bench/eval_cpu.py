"""Who burns the CPU while an evaluation point is slow? (issue 15, after bench.eval_order)

bench.eval_order found the sweep's POPE-shaped point slow on a fresh adapter (~74 samples/s over all three
timed passes) and fast (~108) in every later stage, each of which came after `model_only` (a batch
prepared by `prepare_text` in the main process, then `generate_prepared` on the main thread); the sweep
itself, which never calls either, is slow on every workload. This bench runs the same point in stages and,
over each point's timed passes only, records CPU seconds per thread of this process (by thread name), the
CPU seconds and thread count of each preparation worker and its TOKENIZERS_PARALLELISM, and Python's
garbage collections (count, seconds):

    S1 fresh adapter; S2 the same again, nothing between; S3 after `prepare_text` of one batch in the main
    process; S4 after `generate_prepared` of one batch on the main thread (the other half of model_only).

    python -m bench.eval_cpu --out $OUT
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

import torch

from omnibench import speed as speed_module
from omnibench.speed import SweepConfig, _eval_speed_safely
from omnibench.speed_cli import registry_factory
from omnibench.tasks.pope import Pope

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(stat_path: str) -> float:
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def threads() -> dict[str, float]:
    """CPU seconds of this process's threads, summed by name: Python's name for Python threads (the main
    thread, the model thread `omnibench-model_0`, the executor's queue thread), the OS name for the rest."""
    import threading
    named = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            name = named.get(int(tid)) or Path(f"/proc/self/task/{tid}/comm").read_text().strip() + " (native)"
            out[name] = out.get(name, 0.0) + _cpu_seconds(f"/proc/self/task/{tid}/stat")
        except OSError:  # the thread ended
            pass
    return out


def children() -> dict[int, dict]:
    """This process's child processes: CPU seconds (their threads included), thread count, tokenizer env."""
    me, out = str(os.getpid()), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if fields[1] != me:
                continue
            status = Path(f"/proc/{pid}/status").read_text()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            out[int(pid)] = {"cpu_s": (int(fields[11]) + int(fields[12])) / TICK,
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
            t0, k0 = threads(), children()
            gc.callbacks.append(probe._gc)
            w = time.perf_counter()
            try:
                return probe._saved(timer, fn)
            finally:
                probe.wall += time.perf_counter() - w
                gc.callbacks.remove(probe._gc)
                t1, k1 = threads(), children()
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
                "process_cpu_s": round(sum(self.threads.values()), 2), "children_cpu_s": round(self.children_cpu, 2),
                "children": len(kids), "children_threads": sorted({c["threads"] for c in kids}),
                "children_TOKENIZERS_PARALLELISM": sorted({str(c["TOKENIZERS_PARALLELISM"]) for c in kids}),
                "gc_collections": self.gc_n, "gc_s": round(self.gc_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="omnimamba")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="full", help="tiny: a CPU smoke run of this script")
    args = parser.parse_args()
    cfg = SweepConfig(models=[args.model], device=args.device, preset=args.preset, eval_samples=args.samples,
                      point_timeout_s=60, full_generation_budget_s=0,
                      prep_workers=None if args.device.startswith("cuda") else 2)
    adapter = registry_factory(cfg)(args.model, "best")
    rows: list[dict] = []
    batch = Pope.throughput_requests(cfg.eval_batch)

    def stage(name: str) -> None:
        with Probe() as probe:
            point = _eval_speed_safely(adapter, "pope", cfg)
        rows.append({"stage": name, "status": point.get("status"), "samples_per_s": point.get("samples_per_second"),
                     "pass_samples_per_s": point.get("pass_samples_per_second"), **probe.row()})
        print(json.dumps(rows[-1]), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"eval_cpu_{args.model}.json").write_text(json.dumps(
            {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
             "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
             "env_TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM"), "stages": rows}, indent=1))

    stage("S1 fresh adapter")
    stage("S2 again, nothing between")
    items = adapter.prepare_text(batch)
    stage("S3 after prepare_text of one batch in the main process")
    adapter.generate_prepared(items)
    stage("S4 after generate_prepared of one batch on the main thread")


if __name__ == "__main__":
    main()
