"""Speed and memory of long generation (Fig. 1(c)(d)) and of image generation (Table 3).

A point is (model, mode, context length). For each point, at batch 1: prefill of the context, then
decode steps that each append one token at that context (median latency of many steps), tokens/s, peak
memory from torch and from NVML. The total time of a generation up to the length is measured in full
where it fits the budget, else integrated from the per-point latencies and labelled so. Points stream to
a JSONL file as they finish; a re-run skips finished points. An out-of-memory point or one past the
timeout is recorded as such and the sweep goes on (longer points of that model are then skipped).

Adapters provide `prefill(input_ids) -> state` and `decode_step(state, token) -> logits`; the context is
token ids of the exact length (the adapter's `speed_context(length)` when it has one).
"""
from __future__ import annotations

import gc
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from omnibench.config import scoped_args
from omnibench.protocol import ModelAdapter, OmnibenchError, Request

DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384, 23552, 32768, 65536, 100000)


def image_gen_prompt() -> str:
    """Table 3's prompt, as reports/paper/table3_gen_speed.json records it."""
    from omnibench.report import paper_table
    return (paper_table("table3_gen_speed") or {}).get("protocol", {}).get("prompt", "A Picture")


@dataclass
class SweepConfig:
    models: list[str]
    modes: list[str] = field(default_factory=lambda: ["best"])
    lengths: list[int] = field(default_factory=lambda: list(DEFAULT_LENGTHS))
    device: str = "cuda"
    dtype: str = "bfloat16"
    preset: str = "full"
    decode_steps: int = 32
    warmup_steps: int = 4
    repeats: int = 3
    point_timeout_s: float = 300.0
    full_generation_budget_s: float = 60.0
    image_batch: int = 16
    output_dir: str = "results/speed"
    model_args: dict[str, str] = field(default_factory=dict)
    report_only: bool = False
    gpu: str | None = None  # the card whose points are measured/reported; default: this machine's


class Timer:
    """Wall time of a GPU region with CUDA events (after a sync); perf_counter on CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __call__(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            return out, start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0


def nvml_process_memory_bytes() -> int | None:
    """This process's GPU memory as the driver sees it now (allocator cache, CUDA context, graphs)."""
    try:
        import pynvml
        pynvml.nvmlInit()
        pid, total = os.getpid(), 0
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    total += proc.usedGpuMemory
        return total or None
    except Exception:  # no NVML or no permission (containers): the torch number remains
        return None


def gpu_name(device: str) -> str | None:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return None


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Timeout(Exception):
    pass


def measure_point(adapter: ModelAdapter, length: int, cfg: SweepConfig) -> dict[str, Any]:
    """One context length: prefill (median of repeats) and decode latency (median of steps), with
    peak memory: torch's allocator peak, and NVML's process total (allocator cache, CUDA context and
    graphs included) read after the last prefill and at the end. NVML is read between timed regions,
    never polled during them: a polling thread takes the GIL from eager decode loops and slows them."""
    timer = Timer(cfg.device)
    cuda = cfg.device.startswith("cuda")
    deadline = time.perf_counter() + cfg.point_timeout_s
    ids = adapter.speed_context(length)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    prefill_s, state = [], None
    for _ in range(max(1, cfg.repeats)):
        state = None
        _free()
        state, seconds = timer(lambda: adapter.prefill(ids))
        prefill_s.append(seconds)
        if time.perf_counter() > deadline:
            raise _Timeout(f"prefill alone exceeded {cfg.point_timeout_s:g} s")
    nvml_after_prefill = nvml_process_memory_bytes() if cuda else None
    token = torch.full((ids.shape[0],), 7, dtype=torch.long)
    step_s = []
    for i in range(cfg.warmup_steps + cfg.decode_steps):
        _, seconds = timer(lambda: adapter.decode_step(state, token))
        if i >= cfg.warmup_steps:
            step_s.append(seconds)
        if time.perf_counter() > deadline:
            if len(step_s) >= 3:
                break
            raise _Timeout(f"decode did not finish 3 steps within {cfg.point_timeout_s:g} s")
    decode = statistics.median(step_s)
    point = {"prefill_seconds": statistics.median(prefill_s), "decode_seconds_per_token": decode,
             "decode_tokens_per_second": 1.0 / decode if decode > 0 else None, "decode_steps_timed": len(step_s)}
    if cuda:
        point["peak_memory_bytes_torch"] = torch.cuda.max_memory_allocated()
        readings = [r for r in (nvml_after_prefill, nvml_process_memory_bytes()) if r]
        point["peak_memory_bytes_nvml"] = max(readings) if readings else None
    return point


def measure_full_generation(adapter: ModelAdapter, length: int, cfg: SweepConfig, prompt_len: int) -> float:
    """Prefill of the prompt, then decode one token at a time until the context holds `length` tokens."""
    timer = Timer(cfg.device)
    token = torch.full((1,), 7, dtype=torch.long)

    # Adapters with a static KV cache size it once for the whole generation when told its length.

    def run() -> None:
        state = adapter.prefill(adapter.speed_context(prompt_len), max_new_tokens=length - prompt_len)
        for _ in range(length - prompt_len):
            adapter.decode_step(state, token)
    return timer(run)[1]


def integrated_total_seconds(points: Sequence[dict[str, Any]], length: int, prompt_prefill_s: float,
                             prompt_len: int) -> float | None:
    """Time to generate from `prompt_len` to `length` tokens: the integral of the per-token decode latency
    over the context, linear between measured lengths (flat before the first), plus the prompt prefill."""
    pts = sorted((p["length"], p["decode_seconds_per_token"]) for p in points
                 if p.get("status") == "ok" and p["length"] <= length)
    if not pts or pts[-1][0] != length:
        return None
    total, prev_len, prev_lat = 0.0, prompt_len, pts[0][1]
    for n, lat in pts:
        if n <= prompt_len:
            prev_lat = lat
            continue
        total += (n - prev_len) * (prev_lat + lat) / 2
        prev_len, prev_lat = n, lat
    return total + prompt_prefill_s


class SpeedStore:
    """speed_points.jsonl: one line per finished point, fsync'd; the key decides what is finished."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / "speed_points.jsonl"

    @staticmethod
    def key(point: dict[str, Any]) -> tuple:
        return (point["kind"], point["model"], point["mode"], point["length"], point["device"], point["dtype"],
                point["preset"], point.get("model_args", "{}"), point.get("gpu"))

    def load(self) -> dict[tuple, dict[str, Any]]:
        out: dict[tuple, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    p = json.loads(line)
                except json.JSONDecodeError:
                    continue
                out[self.key(p)] = p
        return out

    def append(self, point: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(point, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


AdapterFactory = Callable[[str, str], ModelAdapter]


def run_sweep(cfg: SweepConfig, factory: AdapterFactory, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every (model, mode, length) point not already in the store, then image-generation speed."""
    store = SpeedStore(Path(cfg.output_dir))
    done = store.load()
    # Points of different GPUs never mix: a re-run on another card measures everything again.
    common = {"device": cfg.device, "dtype": cfg.dtype, "preset": cfg.preset, "gpu": cfg.gpu or gpu_name(cfg.device)}
    for model in cfg.models:
        base = {**common, "model_args": json.dumps(scoped_args(model, cfg.model_args), sort_keys=True)}
        for mode in cfg.modes:
            todo = [n for n in sorted(cfg.lengths) if
                    SpeedStore.key({**base, "kind": "context", "model": model, "mode": mode, "length": n}) not in done]
            img_key = SpeedStore.key({**base, "kind": "image_gen", "model": model, "mode": mode, "length": 0})
            if cfg.report_only or (not todo and img_key in done):
                continue
            try:
                adapter = factory(model, mode)
            except OmnibenchError as exc:
                log(f"{model}/{mode}: cannot build the model: {exc}")
                continue
            failed_at: int | None = None
            for n in todo:
                point = {**base, "kind": "context", "model": model, "mode": mode, "length": n}
                if failed_at is not None:
                    point.update(status="skipped", reason=f"a shorter context ({failed_at}) already failed")
                else:
                    point.update(_measure_safely(adapter, n, cfg))
                    if point["status"] != "ok":
                        failed_at = n
                log(f"{model}/{mode} @ {n}: {point['status']}"
                    + (f", {point['decode_seconds_per_token'] * 1e3:.2f} ms/token, prefill "
                       f"{point['prefill_seconds']:.3f} s" if point["status"] == "ok" else f" ({point.get('reason')})"))
                store.append(point)
                done[SpeedStore.key(point)] = point
            if img_key not in done:
                point = {**base, "kind": "image_gen", "model": model, "mode": mode, "length": 0}
                point.update(_image_speed_safely(adapter, cfg))
                log(f"{model}/{mode} image generation: {point['status']}"
                    + (f", {point['images_per_second']:.2f} images/s" if point["status"] == "ok" else f" ({point.get('reason')})"))
                store.append(point)
                done[img_key] = point
            del adapter
            _free()
    wanted = {(m, mode, json.dumps(scoped_args(m, cfg.model_args), sort_keys=True))
              for m in cfg.models for mode in cfg.modes}
    return [p for p in done.values() if (p["model"], p["mode"], p.get("model_args", "{}")) in wanted
            and p["device"] == cfg.device and p["dtype"] == cfg.dtype and p["preset"] == cfg.preset
            and p.get("gpu") == common["gpu"]
            and (p["kind"] == "image_gen" or p["length"] in cfg.lengths)]


def _measure_safely(adapter: ModelAdapter, length: int, cfg: SweepConfig) -> dict[str, Any]:
    try:
        point = measure_point(adapter, length, cfg)
        point["status"] = "ok"
        if cfg.full_generation_budget_s > 0:
            estimate = point["decode_seconds_per_token"] * length
            if estimate <= cfg.full_generation_budget_s:
                point["total_seconds_measured"] = measure_full_generation(adapter, length, cfg, prompt_len(length))
        return point
    except _Timeout as exc:
        _free()
        return {"status": "timeout", "reason": str(exc)}
    except Exception as exc:
        if not _is_oom(exc):
            raise
        _free()
        return {"status": "oom", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}


def prompt_len(length: int) -> int:
    """Length of the starting prompt of a forced generation (image tokens + question), capped by the target."""
    return min(length, 640)


def _image_speed_safely(adapter: ModelAdapter, cfg: SweepConfig) -> dict[str, Any]:
    prompt = image_gen_prompt()
    requests = [Request(f"speed_{i}", prompt, seed=i) for i in range(cfg.image_batch)]
    timer = Timer(cfg.device)
    try:
        adapter.generate_images(requests[:1])  # warm-up: compile, graphs, allocator
        if cfg.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        images, seconds = timer(lambda: adapter.generate_images(requests))
    except OmnibenchError as exc:
        return {"status": "unsupported", "reason": str(exc)}
    except Exception as exc:
        if not _is_oom(exc):
            raise
        _free()
        return {"status": "oom", "reason": str(exc).splitlines()[0][:160]}
    out = {"status": "ok", "batch": len(images), "total_seconds": seconds,
           "images_per_second": len(images) / seconds, "image_size": list(images[0].size)}
    if cfg.device.startswith("cuda"):
        out["peak_memory_bytes_torch"] = torch.cuda.max_memory_allocated()
    return out


def with_totals(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adds `total_seconds` and `total_source` (measured | integrated) to every ok context point."""
    out = []
    for p in points:
        p = dict(p)
        if p["kind"] == "context" and p.get("status") == "ok":
            if "total_seconds_measured" in p:
                p["total_seconds"], p["total_source"] = p["total_seconds_measured"], "measured"
            else:
                same = [q for q in points if q["kind"] == "context" and q["model"] == p["model"]
                        and q["mode"] == p["mode"]]
                first = min((q for q in same if q.get("status") == "ok"), key=lambda q: q["length"])
                total = integrated_total_seconds(same, p["length"], first["prefill_seconds"], prompt_len(first["length"]))
                p["total_seconds"], p["total_source"] = total, "integrated"
        out.append(p)
    return out


def as_dict(cfg: SweepConfig) -> dict[str, Any]:
    return asdict(cfg)
