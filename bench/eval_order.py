"""Does a model's evaluation throughput depend on what its process ran before? (issue 15)

The speed sweep times a model's evaluation points after its long-context and image points, in the same
process, on the same adapter. This bench times the sweep's own POPE-shaped evaluation point
(`omnibench.speed._eval_speed_safely`) and one batch's model-only `generate_prepared` on a fresh adapter,
then again after the sweep's context points (`--lengths`), then after its image point: the same code, the
same machine, one process, so any difference is the process's history.

    python -m bench.eval_order --out $OUT --model omnimamba --lengths 1024,100000
"""
from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

from omnibench.speed import (SweepConfig, _eval_speed_safely, _image_speed_safely, _measure_safely,
                             free_accelerator_memory)
from omnibench.speed_cli import registry_factory
from omnibench.tasks.pope import Pope


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def model_only(adapter, batch: int, repeats: int = 5) -> float:
    """Median seconds of one POPE-shaped batch through `generate_prepared` (preparation not timed)."""
    items = adapter.prepare_text(Pope.throughput_requests(batch))
    adapter.generate_prepared(items)
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        adapter.generate_prepared(items)
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="omnimamba")
    parser.add_argument("--lengths", default="1024,100000", help="context points run between the two timings")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="full", help="tiny: a CPU smoke run of this script")
    args = parser.parse_args()
    cfg = SweepConfig(models=[args.model], lengths=[int(n) for n in args.lengths.split(",")], device=args.device,
                      preset=args.preset, eval_samples=args.samples, point_timeout_s=60, full_generation_budget_s=0,
                      prep_workers=None if args.device.startswith("cuda") else 0)
    adapter = registry_factory(cfg)(args.model, "best")
    stages: list[dict] = []

    def stage(name: str) -> None:
        point = _eval_speed_safely(adapter, "pope", cfg)
        row = {"after": name, "pope_samples_per_s": point.get("samples_per_second"),
               "model_only_batch_s": model_only(adapter, cfg.eval_batch), "gc_objects": len(gc.get_objects()),
               "torch_reserved_gib": torch.cuda.memory_reserved() / 2 ** 30 if torch.cuda.is_available() else 0}
        stages.append(row)
        print(json.dumps(row), flush=True)

    stage("fresh adapter")
    for n in cfg.lengths:
        point = _measure_safely(adapter, n, cfg)
        print(f"context {n}: {point['status']}", flush=True)
    stage(f"context points {args.lengths}")
    point = _image_speed_safely(adapter, cfg)
    print(f"image: {point['status']} {point.get('images_per_second')}", flush=True)
    stage("image point")
    gc.collect()
    free_accelerator_memory()
    stage("gc.collect + free_accelerator_memory")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"eval_order_{args.model}.json").write_text(json.dumps(
        {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__, "model": args.model,
         "lengths": cfg.lengths, "samples": cfg.eval_samples, "stages": stages}, indent=1))


if __name__ == "__main__":
    main()
