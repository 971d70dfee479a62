"""Does a model's evaluation throughput depend on what its process ran before? (issue 15)

The speed sweep times a model's evaluation points after its long-context and image points, in the same
process, on the same adapter. This bench times the sweep's own POPE-shaped evaluation point
(`omnibench.speed._eval_speed_safely`) and one batch's model-only `generate_prepared` on a fresh adapter,
then again after the sweep's context points (`--lengths`), then after its image point: the same code, the
same machine, one process, so any difference is the process's history. The fresh adapter's point is timed
twice in a row first (is it the first pass of the process that is slow, or what runs between?); each stage
records its pipeline calls' durations, the SM clock after it and the seconds since the adapter's build.

    python -m bench.eval_order --out $OUT --model omnimamba --lengths 1024,100000
"""
from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

from omnibench import prep as prep_module
from omnibench import pipeline as pipeline_module
from omnibench.speed import (SweepConfig, _eval_speed_safely, _image_speed_safely, _measure_safely,
                             free_accelerator_memory)
from omnibench.speed_cli import registry_factory
from omnibench.tasks.pope import Pope

from .eval_profile import timed


def sm_clock_mhz() -> int | None:
    """The GPU's SM clock now (NVML), to see a clock that was still rising during a stage."""
    try:
        import pynvml
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetClockInfo(pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device()),
                                             pynvml.NVML_CLOCK_SM)
    except Exception:  # no NVML (CPU machine)
        return None


def model_only(adapter, batch: int, repeats: int = 5) -> float:
    """Median seconds of one POPE-shaped batch through `generate_prepared` (preparation not timed)."""
    items = adapter.prepare_text(Pope.throughput_requests(batch))
    adapter.generate_prepared(items)
    times = sorted(timed(adapter.generate_prepared, items)[1] for _ in range(repeats))
    return times[len(times) // 2]


class Calls:
    """Durations of the pipeline's calls, in order: the host preparation of a batch (main thread), the
    model's `generate_prepared` (model thread), and the main thread's wait for the batch in flight
    (`OneAhead.swap`). A point makes 1 + `repeats` passes over its `batches` batches (untimed, then the
    timed ones), so the lists split into passes: `batches` preparations and model calls a pass, and
    2 x `batches` + 1 swaps (one wait and one start a batch, the last wait)."""

    def __init__(self, adapter, batches: int) -> None:
        self.adapter, self.batches = adapter, batches
        self.log: dict[str, list[float]] = {"prep_s": [], "model_s": [], "wait_s": []}

    def _timed(self, key, fn):
        def inner(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.log[key].append(time.perf_counter() - t)
        return inner

    def __enter__(self) -> "Calls":
        self._saved = (prep_module.HostPrep.__call__, pipeline_module.OneAhead.swap)
        prep_module.HostPrep.__call__ = self._timed("prep_s", prep_module.HostPrep.__call__)
        pipeline_module.OneAhead.swap = self._timed("wait_s", pipeline_module.OneAhead.swap)
        method = type(self.adapter).generate_prepared.__get__(self.adapter)
        self.adapter.generate_prepared = self._timed("model_s", method)
        return self

    def __exit__(self, *exc) -> None:
        prep_module.HostPrep.__call__, pipeline_module.OneAhead.swap = self._saved
        del self.adapter.generate_prepared  # the class's method shows through again

    def summary(self) -> dict:
        """Each kind of call's total per pass (the untimed pass first), and every call."""
        out = {}
        for key, values in self.log.items():
            size = 2 * self.batches + 1 if key == "wait_s" else self.batches
            out[key] = {"per_pass_sum": [round(sum(values[i:i + size]), 4) for i in range(0, len(values), size)],
                        "each": [round(v, 4) for v in values]}
        return out


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
    start = time.perf_counter()
    adapter = registry_factory(cfg)(args.model, "best")
    stages: list[dict] = []

    def stage(name: str) -> None:
        with Calls(adapter, -(-cfg.eval_samples // cfg.eval_batch)) as calls:
            point = _eval_speed_safely(adapter, "pope", cfg)
        row = {"after": name, "pope_samples_per_s": point.get("samples_per_second"), "calls": calls.summary(),
               "model_only_batch_s": model_only(adapter, cfg.eval_batch), "gc_objects": len(gc.get_objects()),
               "torch_reserved_gib": torch.cuda.memory_reserved() / 2 ** 30 if torch.cuda.is_available() else 0,
               "sm_clock_mhz_after": sm_clock_mhz(), "seconds_since_start": round(time.perf_counter() - start, 1)}
        stages.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "calls"}), flush=True)
        print(json.dumps({"pass_samples_per_s": point.get("pass_samples_per_second"),
                          **{k: v["per_pass_sum"] for k, v in row["calls"].items()}}), flush=True)
        write()

    def write() -> None:  # after every stage: a run cut short keeps what it measured
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"eval_order_{args.model}.json").write_text(json.dumps(
            {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
             "model": args.model, "lengths": cfg.lengths, "samples": cfg.eval_samples, "stages": stages}, indent=1))

    stage("fresh adapter")
    stage("the same, again (nothing between)")
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


if __name__ == "__main__":
    main()
