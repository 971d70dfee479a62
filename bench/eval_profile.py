"""Where the time of an evaluation batch and of a text-to-image batch goes, per phase (GPU, full size,
random weights, bf16, warmed at the same shapes first).

    python -m bench.eval_profile --out <folder> [--models omnimamba,showo,janusflow] [--batch 16]

Per model: the speed sweep's pipelined POPE-shaped evaluation (omnibench.speed) with the host preparation
in the main process and in worker processes, host preparation of one batch (`prepare_text`), the model call (`generate_prepared`),
and inside it the phases each adapter exposes (OmniMamba: vision towers + projector, prompt assembly,
prefill, decode steps), each timed with a device synchronisation around it (so the phases add up to a
slower call than the pipelined one; the point is their shares). Also the profiler's top kernels of one
OmniMamba batch and, for OmniMamba, a text-to-image batch split into image tokens, VQ decode and the
conversion to PIL images. Profiles run after every timing (the profiler slows the process's later
launches). Writes eval_profile.json into --out.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from omnibench.protocol import Request
from omnibench.registry import get_model_class
from omnibench.tasks.pope import Pope

from .batched_prefill import top_kernels


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, *args, **kwargs):
    sync()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    sync()
    return out, time.perf_counter() - t0


@contextmanager
def phases(obj, names: list[str], record: dict[str, float]):
    """Wrap obj.<name> for each name so that every call adds its synchronised time to record[name]."""
    originals = {n: getattr(obj, n) for n in names}

    def wrap(name, fn):
        def inner(*args, **kwargs):
            out, s = timed(fn, *args, **kwargs)
            record[name] += s
            return out
        return inner
    for n, fn in originals.items():
        setattr(obj, n, wrap(n, fn))
    try:
        yield
    finally:
        for n in names:
            delattr(obj, n)  # the instance attribute goes; the class's method shows through again


def eval_phases(name: str, batch: int, repeats: int, device: str, preset: str, pipeline_samples: int,
                switch_interval: float = 0.0) -> dict:
    adapter = get_model_class(name)(device=device, dtype="bfloat16", preset=preset)
    requests = Pope.throughput_requests(batch)
    items = adapter.prepare_text(requests)
    adapter.generate_prepared(items)  # warm at this batch
    adapter.generate_prepared(items)
    out: dict = {"batch": batch}
    _, out["prepare_text_s"] = timed(adapter.prepare_text, requests)
    calls = [timed(adapter.generate_prepared, items)[1] for _ in range(repeats)]
    out["generate_prepared_s"] = sorted(calls)[len(calls) // 2]
    out["samples_per_s_model_only"] = batch / out["generate_prepared_s"]
    from omnibench.prep import default_workers
    from omnibench.speed import SweepConfig, _eval_speed_safely
    import sys
    default_interval = sys.getswitchinterval()
    # The speed point's pipeline, host prep here or in workers; with `switch_interval`, also the workers'
    # pipeline under that GIL switch interval (the model thread waits less for the GIL while the host
    # threads pickle and unpickle batches).
    runs = [(w, None) for w in sorted({0, default_workers(device)})]
    runs += [(default_workers(device), switch_interval)] if switch_interval else []
    for workers, interval in runs:
        cfg = SweepConfig(models=[name], device=device, eval_samples=pipeline_samples, eval_batch=batch,
                          prep_workers=workers)
        sys.setswitchinterval(interval or default_interval)
        try:
            key = f"pipeline_prep_workers_{workers}" + (f"_switch_interval_{interval}" if interval else "")
            out[key] = _eval_speed_safely(adapter, "pope", cfg)
        finally:
            sys.setswitchinterval(default_interval)
    record: dict[str, float] = defaultdict(float)
    if name == "omnimamba":
        m = adapter.model
        with torch.inference_mode():  # the towers' CUDA graph against the same towers run eagerly
            pixels = torch.stack([p.pixels[0] for p in items])
            graphed, out["vision_graphed_s"] = timed(m.image_features, pixels)
            m.use_cuda_graphs = False
            eager, out["vision_eager_s"] = timed(m.image_features, pixels)
            m.use_cuda_graphs = True
            out["vision_graphed_vs_eager_max_abs"] = (graphed.float() - eager.float()).abs().max().item()
        with phases(m, ["image_features", "prefill"], record), phases(adapter, ["mmu_batch_embeddings", "decode_step"], record):
            _, total = timed(adapter.generate_prepared, items)
        out["phases_s"] = dict(record, total_synchronised=total)
        # Profiled last (main): the profiler slows every later launch of the process (omnibench.speed).
        out["top_kernels"] = lambda: top_kernels(lambda: adapter.generate_prepared(items), n=25)
    return out


def t2i_phases(batch: int, device: str, preset: str) -> dict:
    from omnibench.models.omnimamba import OmniMambaAdapter
    adapter = OmniMambaAdapter(device=device, dtype="bfloat16", preset=preset)
    requests = [Request(f"t2i_{i}", "A Picture", seed=i) for i in range(batch)]
    adapter.generate_images(requests)
    adapter.generate_images(requests)
    m, vq = adapter.model, adapter.model.llm_backbone.vqvae
    with torch.inference_mode():
        codes, tok_s = timed(adapter.generate_image_tokens, requests)
        pixels, vq_s = timed(vq.decode_code, codes)
        # The decoder's convolutions with channels-last tensors (a diagnostic: same weights, other layout).
        vq.to(memory_format=torch.channels_last)
        vq.decode_code(codes)
        last, vq_last_s = timed(vq.decode_code, codes)
        vq.to(memory_format=torch.contiguous_format)
        # The graphed decode step alone (no sampling), on a T2I state of this batch.
        ids = torch.tensor([adapter.t2i_ids(r.prompt) for r in requests], device=device)
        embeds = m.caption_embeddings(ids)
        (state, logits), prefill_s = timed(m.prefill, embeds, "t2i")  # replayed from its CUDA graph
        m.use_cuda_graphs = False
        (eager, eager_logits), eager_prefill_s = timed(m.prefill, embeds, "t2i")
        m.use_cuda_graphs = True
        prefill_equal = torch.equal(logits, eager_logits) and all(
            torch.equal(a, b) for a, b in zip(state.tensors(), eager.tensors()))
        token = logits.argmax(-1)
        for _ in range(3):
            m.step(state, token)
        _, steps_s = timed(lambda: [m.step(state, token) for _ in range(50)])
    _, total = timed(adapter.generate_images, requests)
    steps = m.config.num_image_tokens
    return {"batch": batch, "image_tokens_s": tok_s, "per_step_ms": tok_s / steps * 1e3, "vq_decode_s": vq_s,
            "vq_decode_channels_last_s": vq_last_s,
            "vq_channels_last_max_abs_diff": (last.float() - pixels.float()).abs().max().item(),
            "caption_prefill_s": prefill_s, "caption_prefill_eager_s": eager_prefill_s,
            "caption_prefill_graphed_equals_eager": prefill_equal, "graphed_step_ms": steps_s / 50 * 1e3,
            "generate_images_s": total, "images_per_s": batch / total,
            "top_kernels_tokens": lambda: top_kernels(lambda: adapter.generate_image_tokens(requests), n=12),
            "top_kernels_vq": lambda: top_kernels(lambda: vq.decode_code(codes), n=8)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default="omnimamba,showo,janusflow")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-t2i", action="store_true")
    parser.add_argument("--pipeline-samples", type=int, default=128, help="POPE-shaped requests of the pipelined runs")
    parser.add_argument("--switch-interval", type=float, default=0.0,
                        help="also time the pipeline with this sys.setswitchinterval (seconds; 0: not)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="full", help="full (1.3B, random weights) or tiny (a CPU dry run)")
    args = parser.parse_args()
    result = {"gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None, "torch": torch.__version__, "eval": {}}
    for name in args.models.split(","):
        result["eval"][name] = eval_phases(name, args.batch, args.repeats, args.device, args.preset, args.pipeline_samples,
                                             args.switch_interval)
        torch.cuda.empty_cache()
        print(name, json.dumps({k: v for k, v in result["eval"][name].items() if k != "top_kernels"}), flush=True)
    if not args.no_t2i:
        result["t2i"] = t2i_phases(args.batch, args.device, args.preset)
        print("t2i", json.dumps({k: v for k, v in result["t2i"].items() if not k.startswith("top")}), flush=True)
    # Every profile after every timing: torch's profiler slows each later launch of the process.
    for part in [*result["eval"].values(), result.get("t2i", {})]:
        for key, value in part.items():
            if callable(value):
                part[key] = value()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "eval_profile.json").write_text(json.dumps(result, indent=2) + "\n")
    for row in result["eval"].get("omnimamba", {}).get("top_kernels", []):
        print(f"  {row['cuda_ms']:9.2f} ms  {row['calls']:6d}  {row['kernel']}")


if __name__ == "__main__":
    main()
