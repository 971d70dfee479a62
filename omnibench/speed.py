"""Speed and memory of long generation (Fig. 1(c)(d)) and of image generation (Table 3).

A point is (model, mode, context length). For each point, at batch 1: prefill of the context, then
decode steps that each append one token at that context (median latency of many steps), tokens/s, peak
memory from torch and from NVML. The total time of a generation up to the length is measured in full
where it fits the budget, else integrated from the per-point latencies and labelled so. Points stream to
a JSONL file as they finish; a re-run skips finished points measured with the same code (`code_version`:
the model family's modules, an evaluation point's task, the timing code) and the same sweep flags
(`sweep_settings`), and measures again, saying so, those measured with other ones. An out-of-memory point
or one past the timeout is recorded as such and the sweep goes on (longer points of that model are then
skipped).

Every timed call is first made untimed at exactly its timed shapes (batch, length, route, cache size):
Triton compile and autotune, CUDA-graph capture, cuDNN plans and allocator growth happen there, never
inside a timed region. Each point records the attention kernels one untimed call actually launched
(torch's profiler, run only after every timed point of the run: see ATTENTION_PENDING), the SDPA
backends the mode allowed, and the adapter's own speed settings.

Modes: `best` and `as_published` are the adapters' modes. `as_published` runs SDPA with the backends
upstream's pinned torch (2.0-2.2) had: flash, memory-efficient and math, not cuDNN (torch >= 2.5 picks
cuDNN first on Hopper, and in an eager decode loop, where every step is a new sequence length, it builds
a new plan per step). `as_published+cudnn` is the same adapter mode with this torch's default backends:
the cuDNN effect as its own row.

Adapters provide `prefill(input_ids) -> state` and `decode_step(state, token) -> logits`; the context is
token ids of the exact length (the adapter's `speed_context(length)` when it has one).
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from omnibench.config import scoped_args
from omnibench.errors import free_accelerator_memory, is_out_of_memory
from omnibench.protocol import ModelAdapter, OmnibenchError, Request, SpeedProtocol

DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384, 23552, 32768, 65536, 100000)
EVAL_WORKLOADS = ("pope", "mme", "mmmu")
CLOCK = time.perf_counter  # the wall clock of CPU timings (a test puts a fake clock here)


def sdpa_backends(mode: str) -> list[str] | None:
    """The SDPA backends a sweep mode allows (None: this torch's default choice)."""
    if mode == "as_published":  # what torch 2.0-2.2 had: no cuDNN attention
        return ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"]
    return None


SWEEP_MODES = ("best", "as_published", "as_published+cudnn")


def adapter_mode(mode: str) -> str:
    """The adapter's own mode behind a sweep mode (`as_published+cudnn` is `as_published`)."""
    return mode.split("+")[0]


def sdpa_context(mode: str):
    """A context in which SDPA may use only the mode's backends (nothing restricted for None)."""
    import contextlib

    names = sdpa_backends(mode)
    if names is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([getattr(SDPBackend, n) for n in names])


# Kernel-name markers of each attention implementation, checked in this order.
_ATTENTION_MARKERS = (("cudnn", ("cudnn",)), ("flash", ("pytorch_flash",)), ("flash-attn", ("flash",)),
                      ("efficient", ("fmha", "mem_eff", "efficient_attention")), ("math", ("softmax",)))


def classify_attention(kernel_names: Sequence[str]) -> str:
    """The attention backend a set of CUDA kernel names shows: cudnn, flash-attn (the flash_attn package),
    flash (torch's), efficient, math (unfused softmax), or none (no attention kernel: a state-space model)."""
    lowered = [k.lower() for k in kernel_names]
    found = []
    for label, markers in _ATTENTION_MARKERS:
        hits = [k for k in lowered if any(m in k for m in markers)
                # cuDNN's convolutions are named *_cudnn too (VQ and VAE decoders): its attention says sdpa
                and (label != "cudnn" or any(w in k for w in ("sdpa", "attention", "fmha", "flash")))]
        if hits:
            found.append(label)
            lowered = [k for k in lowered if k not in hits]
    return "+".join(found) if found else "none"


def attention_used(fn: Callable[[], Any], device: str) -> dict[str, Any]:
    """The attention kernels one (untimed) call of `fn` launches, from torch's profiler."""
    if not device.startswith("cuda"):
        fn()
        return {"attention_backend": "cpu"}
    try:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        names = sorted({e.name for e in prof.events() if getattr(e, "device_type", None) is not None
                        and "cuda" in str(e.device_type).lower()})
    except Exception as exc:  # a profiler that cannot run here: say so, never guess
        return {"attention_backend": f"unknown (profiler failed: {type(exc).__name__})"}
    attention = [n for n in names if classify_attention([n]) != "none"]
    return {"attention_backend": classify_attention(names), "attention_kernels": attention[:6]}


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
    eval_workloads: list[str] = field(default_factory=lambda: list(EVAL_WORKLOADS))
    eval_samples: int = 256
    eval_batch: int = 16
    prep_workers: int | None = None  # host-side preparation processes of the evaluation points (None: default_workers)
    fid_features: int = 0  # images for the Inception-rate point of the FID-30K estimate (0: not measured)
    fid_workers: int = 8
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
        t0 = CLOCK()
        out = fn()
        return out, CLOCK() - t0


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


def _guarded(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A point's measurement, or its status: `unsupported` (the model says it cannot) or `oom`."""
    try:
        return measure()
    except OmnibenchError as exc:
        return {"status": "unsupported", "reason": str(exc)}
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        free_accelerator_memory()
        return {"status": "oom", "reason": str(exc).splitlines()[0][:160]}


class _Timeout(Exception):
    pass


def measure_point(adapter: ModelAdapter, length: int, cfg: SweepConfig) -> dict[str, Any]:
    """One context length: prefill (median of repeats) and decode latency (median of steps), with
    peak memory: torch's allocator peak, and NVML's process total (allocator cache, CUDA context and
    graphs included) read after the last prefill and at the end. NVML is read between timed regions,
    never polled during them: a polling thread takes the GIL from eager decode loops and slows them.
    Each prefill shape is called once untimed before it is timed; decode steps start with untimed
    warm-up steps on the same state."""
    timer = Timer(cfg.device)
    cuda = cfg.device.startswith("cuda")
    ids = adapter.speed_context(length)
    prompt_ids = adapter.speed_context(prompt_len(length))
    # The first call after a model is built compiles and autotunes its kernels (tens of seconds for
    # Triton): made at the prompt's length before the point's time limit starts, so the limit measures
    # the point, not the compiler.
    adapter.prefill(prompt_ids)  # also the untimed call at the prompt's shape (and at the point's, if the same)
    deadline = time.perf_counter() + cfg.point_timeout_s
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def timed_prefill(context: torch.Tensor, repeats: int, warmed: bool) -> tuple[Any, float]:
        state = None if warmed else adapter.prefill(context)  # untimed, at this exact shape: autotune, plans
        seconds = []
        for _ in range(max(1, repeats)):
            state = None
            free_accelerator_memory()
            state, s = timer(lambda: adapter.prefill(context))
            seconds.append(s)
            if time.perf_counter() > deadline:
                raise _Timeout(f"prefill alone exceeded {cfg.point_timeout_s:g} s")
        return state, statistics.median(seconds)

    separate = prompt_ids.shape[1] != length
    _, prompt_prefill = timed_prefill(prompt_ids, cfg.repeats, warmed=True) if separate else (None, None)
    state, prefill = timed_prefill(ids, cfg.repeats, warmed=not separate)
    nvml_after_prefill = nvml_process_memory_bytes() if cuda else None
    token = torch.full((ids.shape[0],), 7, dtype=torch.long)
    step_s = []
    warmup = max(1, cfg.warmup_steps)  # the first step at a state's shape captures its graph: never timed
    for i in range(warmup + cfg.decode_steps):
        _, seconds = timer(lambda: adapter.decode_step(state, token))
        if i >= warmup:
            step_s.append(seconds)
        if time.perf_counter() > deadline:
            if len(step_s) >= 3:
                break
            raise _Timeout(f"decode did not finish 3 steps within {cfg.point_timeout_s:g} s")
    decode = statistics.median(step_s)
    point = {"prefill_seconds": prefill, "decode_seconds_per_token": decode,
             "prompt_prefill_seconds": prefill if prompt_prefill is None else prompt_prefill,
             "decode_tokens_per_second": 1.0 / decode if decode > 0 else None, "decode_steps_timed": len(step_s)}
    if cuda:
        point["peak_memory_bytes_torch"] = torch.cuda.max_memory_allocated()
        readings = [r for r in (nvml_after_prefill, nvml_process_memory_bytes()) if r]
        point["peak_memory_bytes_nvml"] = max(readings) if readings else None
    point["attention_backend"] = attention_until_probed(cfg.device)
    return point


# torch's profiler leaves CUPTI attached to the process when it ends (pytorch/pytorch#144455: Kineto skips
# cuptiFinalize unless TEARDOWN_CUPTI=1), and every later launch pays for it: evaluation-shaped batches
# timed after one profiled decode step ran 25-35% slower on an H200 than the same code in a process that
# had not profiled. So the sweep names the attention kernels only once every timed point of the run is done.
ATTENTION_PENDING = "pending (named after every timed point of the run)"


def profiles(device: str) -> bool:
    """Whether naming a point's attention kernels runs torch's profiler (on CUDA; on CPU it is "cpu")."""
    return device.startswith("cuda")


def attention_until_probed(device: str) -> str:
    """A timed point's `attention_backend` as it is stored first: pending where the profiler will name it."""
    return ATTENTION_PENDING if profiles(device) else "cpu"


def attention_probe(adapter: ModelAdapter, point: dict[str, Any], cfg: SweepConfig) -> dict[str, Any]:
    """The attention kernels of a measured point, read off one untimed call at its shapes: a decode step
    at the context point's length (after one unprofiled step, which captures its graph), or the image
    point's batch."""
    if point["kind"] == "context":
        ids = adapter.speed_context(point["length"])
        state = adapter.prefill(ids)
        token = torch.full((ids.shape[0],), 7, dtype=torch.long)
        adapter.decode_step(state, token)
        return attention_used(lambda: adapter.decode_step(state, token), cfg.device)
    requests = image_requests(cfg)
    return attention_used(lambda: adapter.generate_images(requests), cfg.device)


def measure_full_generation(adapter: ModelAdapter, length: int, cfg: SweepConfig, prompt_len: int) -> float:
    """Prefill of the prompt, then decode one token at a time until the context holds `length` tokens.
    A first, untimed pass of the same prefill (same `max_new_tokens`, so a static cache has its timed
    size) and a few steps captures the graphs and plans the timed pass replays."""
    timer = Timer(cfg.device)
    token = torch.full((1,), 7, dtype=torch.long)
    steps = length - prompt_len
    context = adapter.speed_context(prompt_len)

    def run(n: int) -> None:
        state = adapter.prefill(context, max_new_tokens=steps)
        for _ in range(n):
            adapter.decode_step(state, token)
    run(min(steps, 3))
    free_accelerator_memory()
    return timer(lambda: run(steps))[1]


def integrated_total_seconds(points: Sequence[dict[str, Any]], length: int, prompt_prefill_s: float,
                             prompt_len: int) -> float | None:
    """Time to generate from `prompt_len` to `length` tokens: the integral of the per-token decode latency
    over the context, linear between measured lengths (flat before the first), plus the prompt prefill
    (measured, warmed, at the prompt's own length)."""
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
                point["preset"], point.get("model_args", "{}"), point.get("gpu"), point.get("workload"))

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

TIMING_MODULES = ("omnibench.speed",)  # what times a point, besides the model's own code
# An evaluation point also times the runner's pipeline: the host preparation in worker processes and the
# model call in flight on its thread.
EVAL_PIPELINE_MODULES = ("omnibench.prep", "omnibench.pipeline")


def point_code_version(model: str, workload: str | None = None) -> str:
    """The project code a point's numbers depend on: the model family's modules and libraries
    (`identity.model_code_version`; tasks/fid.py for the Inception point; nothing for a model that is not
    registered, as tests' fakes), an evaluation point's task module (its `throughput_requests` make the
    requests) and the evaluation pipeline it times (EVAL_PIPELINE_MODULES), and the timing code
    (TIMING_MODULES). A stored point with another version is measured again."""
    import importlib

    from omnibench import identity
    from omnibench.registry import get_model_class, get_task_class
    h = hashlib.sha256()
    if model == "inception":
        h.update(identity.code_version("omnibench.tasks.fid").encode())
    else:
        try:
            h.update(identity.model_code_version(get_model_class(model, speed_references=True)).encode())
        except OmnibenchError:
            pass
    if workload is not None:
        h.update(identity.code_version(get_task_class(workload).__module__).encode())
    for name in TIMING_MODULES + (EVAL_PIPELINE_MODULES if workload is not None else ()):
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()[:16]


# Switches that cannot change a point of the given kinds: the cache's location moves files, not numbers;
# the Inception weights file is read by the FID point alone. Any other OMNIBENCH_* switch, known or not,
# belongs to every point.
_ENV_IRRELEVANT = {"OMNIBENCH_CACHE": {"context", "image_gen", "eval_throughput", "fid_features"},
                   "OMNIBENCH_INCEPTION": {"context", "image_gen", "eval_throughput"}}


def speed_environment(kind: str) -> dict[str, str]:
    """The project's environment switches set for this process that can change a point of `kind`
    (`OMNIBENCH_PDL` launches for every kind, the `OMNIBENCH_INCEPTION` file for the FID point)."""
    return {k: os.environ[k] for k in sorted(os.environ)
            if k.startswith("OMNIBENCH_") and kind not in _ENV_IRRELEVANT.get(k, ())}


def point_settings(kind: str, cfg: SweepConfig) -> dict[str, Any]:
    """The sweep flags a point of `kind` is measured with, and the environment switches
    (`speed_environment`), recorded as its `sweep_settings`: a stored point measured with other ones is
    measured again, as one measured with other code is. The point timeout belongs to a context point even
    when it is `ok`: past it, decode stops after 3 timed steps."""
    env = {"env": speed_environment(kind)}
    if kind == "context":
        return {"decode_steps": cfg.decode_steps, "warmup_steps": cfg.warmup_steps, "repeats": cfg.repeats,
                "full_generation_budget_s": cfg.full_generation_budget_s, "point_timeout_s": cfg.point_timeout_s,
                **env}
    if kind == "image_gen":
        return {"image_batch": cfg.image_batch, "repeats": cfg.repeats, **env}
    if kind == "eval_throughput":
        from omnibench.prep import default_workers
        return {"eval_samples": cfg.eval_samples, "eval_batch": cfg.eval_batch, "repeats": cfg.repeats,
                "prep_workers": cfg.prep_workers if cfg.prep_workers is not None else default_workers(cfg.device),
                **env}
    if kind == "fid_features":
        return {"fid_features": cfg.fid_features, "fid_workers": cfg.fid_workers, **env}
    raise ValueError(f"unknown speed point kind {kind!r}")


def run_sweep(cfg: SweepConfig, factory: AdapterFactory, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every (model, mode, length) point not already in the store, then image-generation speed, then (in
    `best` mode) evaluation throughput per workload. `factory(model, adapter_mode)` builds a model; every
    call of a point runs under its mode's SDPA backends."""
    store = SpeedStore(Path(cfg.output_dir))
    done = store.load()
    versions: dict[tuple[str, str | None], str] = {}

    def version(model: str, workload: str | None = None) -> str:
        if (model, workload) not in versions:
            versions[model, workload] = point_code_version(model, workload)
        return versions[model, workload]
    if not cfg.report_only:  # points measured with other code or flags are not finished: measure them again
        mine = {k: p for k, p in done.items()
                if p["model"] in {*cfg.models, *(["inception"] if cfg.fid_features else [])}}
        stale = {k: p for k, p in mine.items() if p.get("code_version") != version(p["model"], p.get("workload"))}
        for model in sorted({p["model"] for p in stale.values()}):
            theirs = [p for p in stale.values() if p["model"] == model]
            log(f"{model}: {len(theirs)} stored point(s) were measured with other code (code_version "
                f"{', '.join(sorted({str(p.get('code_version')) for p in theirs}))}, now "
                f"{', '.join(sorted({version(model, p.get('workload')) for p in theirs}))}); "
                "the ones this run selects are measured again")
        flags = {k: p for k, p in mine.items() if k not in stale
                 and p.get("sweep_settings") != point_settings(p["kind"], cfg)}
        for model in sorted({p["model"] for p in flags.values()}):
            theirs = [p for p in flags.values() if p["model"] == model]
            log(f"{model}: {len(theirs)} stored point(s) were measured with other sweep flags (e.g. "
                f"{theirs[0].get('sweep_settings')}, now {point_settings(theirs[0]['kind'], cfg)}); "
                "the ones this run selects are measured again")
        done = {k: p for k, p in done.items() if k not in stale and k not in flags}
    # Points of different GPUs never mix: a re-run on another card measures everything again.
    common = {"device": cfg.device, "dtype": cfg.dtype, "preset": cfg.preset, "gpu": cfg.gpu or gpu_name(cfg.device)}
    for model in cfg.models:
        base = {**common, "model_args": json.dumps(scoped_args(model, cfg.model_args), sort_keys=True)}
        for mode in cfg.modes:
            todo = [n for n in sorted(cfg.lengths) if
                    SpeedStore.key({**base, "kind": "context", "model": model, "mode": mode, "length": n}) not in done]
            img_key = SpeedStore.key({**base, "kind": "image_gen", "model": model, "mode": mode, "length": 0})
            evals = {w: {**base, "kind": "eval_throughput", "model": model, "mode": mode, "length": 0, "workload": w}
                     for w in (cfg.eval_workloads if mode == "best" else [])}
            evals = {w: p for w, p in evals.items() if SpeedStore.key(p) not in done}
            if cfg.report_only or (not todo and img_key in done and not evals):
                continue
            try:
                adapter = factory(model, adapter_mode(mode))
            except OmnibenchError as exc:
                log(f"{model}/{mode}: cannot build the model: {exc}")
                continue
            settings = {"sdpa_backends": sdpa_backends(mode) or "torch default",
                        **(adapter.speed_settings() if isinstance(adapter, SpeedProtocol) else {})}

            def finish(point: dict[str, Any]) -> None:
                point.update(settings, code_version=version(model, point.get("workload")),
                             sweep_settings=point_settings(point["kind"], cfg),
                             profiled_before_timing=False)  # attention is probed after every timed point
                store.append(point)
                done[SpeedStore.key(point)] = point

            with sdpa_context(mode):
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
                           f"{point['prefill_seconds']:.3f} s"
                           if point["status"] == "ok" else f" ({point.get('reason')})"))
                    finish(point)
                if img_key not in done:
                    point = {**base, "kind": "image_gen", "model": model, "mode": mode, "length": 0}
                    point.update(_image_speed_safely(adapter, cfg))
                    log(f"{model}/{mode} image generation: {point['status']}"
                        + (f", {point['images_per_second']:.2f} images/s" if point["status"] == "ok"
                           else f" ({point.get('reason')})"))
                    finish(point)
                for workload, point in evals.items():
                    point.update(_eval_speed_safely(adapter, workload, cfg))
                    log(f"{model}/{mode} {workload}-shaped evaluation: {point['status']}"
                        + (f", {point['samples_per_second']:.1f} samples/s" if point["status"] == "ok"
                           else f" ({point.get('reason')})"))
                    finish(point)
            del adapter
            free_accelerator_memory()
    fid_key = SpeedStore.key({**common, "kind": "fid_features", "model": "inception", "mode": "-", "length": 0})
    if cfg.fid_features and not cfg.report_only and fid_key not in done:
        point = {**common, "kind": "fid_features", "model": "inception", "mode": "-", "length": 0, "model_args": None,
                 "code_version": version("inception")}
        point.update(_fid_features_safely(cfg))
        point["sweep_settings"] = point_settings("fid_features", cfg)
        log(f"Inception features: {point['status']}"
            + (f", {point['images_per_second']:.0f} images/s" if point["status"] == "ok" else f" ({point.get('reason')})"))
        store.append(point)
        done[fid_key] = point
    if not cfg.report_only:
        _probe_attention([p for p in done.values() if p.get("attention_backend") == ATTENTION_PENDING
                          and p["model"] in cfg.models and p["mode"] in cfg.modes and p["device"] == cfg.device
                          and p["dtype"] == cfg.dtype and p["preset"] == cfg.preset and p.get("gpu") == common["gpu"]
                          and p.get("model_args", "{}") == json.dumps(scoped_args(p["model"], cfg.model_args),
                                                                      sort_keys=True)], cfg, factory, store, log)
    wanted = {(m, mode, json.dumps(scoped_args(m, cfg.model_args), sort_keys=True))
              for m in cfg.models for mode in cfg.modes}
    if cfg.fid_features:
        wanted.add(("inception", "-", None))
    return [p for p in done.values() if (p["model"], p["mode"], p.get("model_args", "{}")) in wanted
            and p["device"] == cfg.device and p["dtype"] == cfg.dtype and p["preset"] == cfg.preset
            and p.get("gpu") == common["gpu"]
            and (p["kind"] != "context" or p["length"] in cfg.lengths)
            and (p["kind"] != "eval_throughput" or p.get("workload") in cfg.eval_workloads)]


def _probe_attention(points: list[dict[str, Any]], cfg: SweepConfig, factory: AdapterFactory, store: SpeedStore,
                     log: Callable[[str], None]) -> None:
    """After the run's timed points: each point's attention kernels (`attention_probe`), per model and
    mode on a newly built model, the point stored again with them (the store keeps a key's last line). A
    probe that fails says so in the point; the timed numbers stand either way."""
    runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for p in points:
        runs.setdefault((p["model"], p["mode"], p.get("model_args", "{}")), []).append(p)
    for (model, mode, _), todo in runs.items():
        try:
            adapter = factory(model, adapter_mode(mode))
        except OmnibenchError as exc:
            log(f"{model}/{mode}: cannot build the model to name its attention kernels: {exc}")
            continue
        with sdpa_context(mode):
            for point in todo:
                found = _guarded(lambda: {"status": "ok", **attention_probe(adapter, point, cfg)})
                if found.pop("status") == "ok":
                    point.update(found)
                else:
                    point["attention_backend"] = f"unknown (its probe failed: {found.get('reason', '')[:120]})"
                store.append(point)
                log(f"{model}/{mode} {point['kind']} {point['length'] or ''}: attention {point['attention_backend']}")
        del adapter
        free_accelerator_memory()


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
        free_accelerator_memory()
        return {"status": "timeout", "reason": str(exc)}
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        free_accelerator_memory()
        return {"status": "oom", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}


def prompt_len(length: int) -> int:
    """Length of the starting prompt of a forced generation (image tokens + question), capped by the target."""
    return min(length, 640)


def image_requests(cfg: SweepConfig) -> list[Request]:
    """The image point's batch: `cfg.image_batch` requests of Table 3's prompt, seeds 0..n-1."""
    prompt = image_gen_prompt()
    return [Request(f"speed_{i}", prompt, seed=i) for i in range(cfg.image_batch)]


def _image_speed_safely(adapter: ModelAdapter, cfg: SweepConfig) -> dict[str, Any]:
    """Images per second of one batch of `cfg.image_batch` requests, warmed by a first call of the same
    batch (graphs of that batch size, autotune at its shapes), timed as the median of `cfg.repeats` calls."""
    requests = image_requests(cfg)
    timer = Timer(cfg.device)

    def measure() -> dict[str, Any]:
        adapter.generate_images(requests)  # warm-up at the timed batch: compile, graphs, allocator
        if cfg.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        seconds, images = [], []
        for _ in range(max(1, cfg.repeats)):
            images, s = timer(lambda: adapter.generate_images(requests))
            seconds.append(s)
        total = statistics.median(seconds)
        out = {"status": "ok", "batch": len(images), "total_seconds": total, "calls_timed": len(seconds),
               "images_per_second": len(images) / total, "image_size": list(images[0].size),
               "attention_backend": attention_until_probed(cfg.device)}
        if cfg.device.startswith("cuda"):
            out["peak_memory_bytes_torch"] = torch.cuda.max_memory_allocated()
        return out
    return _guarded(measure)


def eval_requests(workload: str, n: int) -> list[Request]:
    """`n` requests of a benchmark's real shape: its task's `throughput_requests` (prompt as the task
    builds it, image size, forced answer length)."""
    from omnibench.registry import get_task_class
    return get_task_class(workload).throughput_requests(n)


STAND_IN_WEIGHTS = "stand-in (random weights, same architecture)"


def _fid_features_safely(cfg: SweepConfig) -> dict[str, Any]:
    """Inception pool3 features per second, as coco_fid computes them for generated images: `cfg.fid_features`
    random 256 px PNGs on disk, read by `cfg.fid_workers` DataLoader processes, clean-fid's resize where
    coco_fid runs it by default (`fid.default_resize`: on the device on CUDA), batches of 250. Untimed calls
    first at the timed batch sizes, twice (cuDNN plans, allocator; TorchScript's profiling executor
    optimises a graph on its second run), then the timed call, worker start-up included as in coco_fid;
    the rate after the first batch and the time to it are recorded beside it. The network is the FID file
    when this machine has one, else a stand-in file (bench/inception_stand_in.py, via
    $OMNIBENCH_INCEPTION) or torchvision's InceptionV3, both with random weights."""
    import tempfile

    import numpy as np
    from PIL import Image

    from omnibench.tasks import fid
    try:
        fid.require()
        path = fid.inception_path(download=False)
        if path is not None:
            model = fid.load_inception(path, cfg.device, stand_in_ok=True)
            weights, network = (STAND_IN_WEIGHTS if model.stand_in else "real"), f"the FID Inception ({path.name})"
        else:  # a GPU machine without the weights file: the same architecture times the same
            model, network = _inception_architecture(cfg.device), "torchvision's InceptionV3"
            weights = ("torchvision's InceptionV3 architecture, random weights (the FID weights file was not on "
                       "this machine)")
    except (OmnibenchError, ImportError) as exc:
        return {"status": "unsupported", "reason": str(exc)}
    resize, n = fid.default_resize(cfg.device), cfg.fid_features
    opts = {"size": 256, "device": cfg.device, "batch_size": fid.BATCH_SIZE, "workers": cfg.fid_workers,
            "resize": resize}
    with tempfile.TemporaryDirectory(prefix="omnibench_fid_speed_") as tmp:
        rng = np.random.default_rng(0)
        paths = [Path(tmp) / f"{i:06d}.png" for i in range(n)]
        for path in paths:
            Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path)
        last = n % fid.BATCH_SIZE if n > fid.BATCH_SIZE else 0  # a partial last batch is a shape of its own
        for _ in range(2):
            fid.features(paths[:fid.BATCH_SIZE] + paths[:last], model, **opts, desc="Inception warm-up")
        marks: list[tuple[float, int]] = []
        start = CLOCK()
        fid.features(paths, model, **opts, desc="Inception features (timed)",
                     on_batch=lambda k: marks.append((CLOCK(), k)))
        seconds = CLOCK() - start
    first_at, first_n = marks[0][0] - start, marks[0][1]
    return {"status": "ok", "images": n, "total_seconds": seconds, "images_per_second": n / seconds,
            "steady_images_per_second": (n - first_n) / (seconds - first_at) if n > first_n else None,
            "startup_seconds": first_at, "batch": fid.BATCH_SIZE, "workers": cfg.fid_workers, "resize": resize,
            "inception_weights": weights,
            "note": f"batch {fid.BATCH_SIZE}, {cfg.fid_workers} DataLoader workers decoding 256 px PNGs, clean-fid's "
                    f"resize {'on the device' if resize == 'device' else 'in the workers'}; {network}"}


def _inception_architecture(device: str):
    """torchvision's InceptionV3 (random weights, pool3 output), behind clean-fid's input convention
    (float [0, 255] images at 299 px)."""
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=False, init_weights=False)
    net.fc = torch.nn.Identity()

    class Pool3(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x / 127.5 - 1)
    return Pool3().to(device).eval()


def _eval_speed_safely(adapter: ModelAdapter, workload: str, cfg: SweepConfig) -> dict[str, Any]:
    """Samples per second of `generate_text` over `cfg.eval_samples` requests of `workload`'s shape in
    batches of `cfg.eval_batch`, sorted by prompt length (the runner sorts within a pool of four batches):
    one untimed pass over every batch (each batch shape warmed, the preparation workers started), then
    `cfg.repeats` timed passes (preprocessing of the images included, overlapped with the model's work as
    in the runner), of which the median counts, as every other point's repeats do: a one-time cost of the
    process weighs on a pass of a few hundred requests ~35x more than on a whole POPE run. Every pass's
    rate is recorded (`pass_samples_per_second`, in order)."""
    from omnibench.prep import HostPrep, default_workers
    from omnibench.pipeline import OneAhead

    requests = sorted(eval_requests(workload, cfg.eval_samples), key=lambda r: len(r.prompt))
    batches = [requests[i:i + cfg.eval_batch] for i in range(0, len(requests), cfg.eval_batch)]
    timer = Timer(cfg.device)
    workers = cfg.prep_workers if cfg.prep_workers is not None else default_workers(cfg.device)
    prep = HostPrep(adapter, workers)

    def run() -> int:
        """As the runner sends them: the host prepares batch i + 1 (in `workers` processes) while the model
        answers batch i."""
        ahead, answered = OneAhead(), 0
        for batch in batches:
            items = prep(batch)
            finished = ahead.swap(None)  # the batch in flight ends (the runner writes it here)
            answered += len(finished[1]) if finished else 0
            ahead.swap(lambda items=items: adapter.generate_prepared(items))
        finished = ahead.swap(None)
        return answered + (len(finished[1]) if finished else 0)

    def measure() -> dict[str, Any]:
        run()  # also starts the preparation workers
        if cfg.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        passes = [timer(run) for _ in range(cfg.repeats)]
        answered = passes[0][0]
        seconds = statistics.median(s for _, s in passes)
        tokens = [int(r.gen_kwargs.get("max_new_tokens", 0)) for r in requests]
        out = {"status": "ok", "samples": answered, "batch": cfg.eval_batch, "total_seconds": seconds,
               "samples_per_second": answered / seconds, "repeats": cfg.repeats,
               "pass_samples_per_second": [n / s for n, s in passes],
               "max_new_tokens": max(tokens), "prep_workers": prep.workers,
               "image_size": list(requests[0].images[0].size) if requests[0].images else None}
        if cfg.device.startswith("cuda"):
            out["peak_memory_bytes_torch"] = torch.cuda.max_memory_allocated()
        return out
    try:
        return _guarded(measure)
    finally:
        prep.close()


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
                total = integrated_total_seconds(same, p["length"], first.get("prompt_prefill_seconds", first["prefill_seconds"]),
                                                 prompt_len(first["length"]))
                p["total_seconds"], p["total_source"] = total, "integrated"
        out.append(p)
    return out


def as_dict(cfg: SweepConfig) -> dict[str, Any]:
    return asdict(cfg)
