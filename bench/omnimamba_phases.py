"""Where OmniMamba's time goes in an understanding batch and in text-to-image, op by op (GPU, full size,
random weights, bf16, every call warmed at its shapes first).

    python -m bench.omnimamba_phases --out <folder> [--batches 16,32,64]

- `vision`: the two towers + projector on a POPE-shaped batch, eager and replayed from a CUDA graph, and
  the profiler's top ATen ops (with input shapes) and kernels of the eager call (profiles run after every
  timing: the profiler slows the process's later launches).
- `prefill`: the padded batch prefill of the same batch, its time and top ops / kernels.
- `model_only`: `generate_prepared` (vision + prefill + 3 decode steps) at each of `--batches`.
- `t2i`: images/s of `generate_images` at each of `--batches` (the batch coco_fid generates at matters
  for FID-30K wall-clock).
Writes omnimamba_phases.json into --out.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from omnibench.models.omnimamba import OmniMambaAdapter
from omnibench.protocol import Request
from omnibench.tasks.pope import Pope


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_time(fn, repeats: int = 5) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def top(fn, n: int = 20) -> dict:
    """The profiler's top ATen ops (self device time, grouped by input shapes) and top kernels of one call."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts, record_shapes=True) as prof:
        fn()
        sync()
    ops = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_device_time_total)[:n]
    kernels = sorted((e for e in prof.key_averages() if e.device_type.name == "CUDA"),
                     key=lambda e: -e.device_time_total)[:n]
    return {"ops": [{"op": e.key, "shapes": str(e.input_shapes)[:160], "calls": e.count,
                     "self_device_ms": e.self_device_time_total / 1e3} for e in ops],
            "kernels": [{"kernel": e.key[:120], "calls": e.count, "device_ms": e.device_time_total / 1e3}
                        for e in kernels]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--batches", default="16,32,64")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="full", help="full (1.3B, random weights) or tiny (a CPU dry run)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    adapter = OmniMambaAdapter(device=args.device, dtype="bfloat16", preset=args.preset)
    m = adapter.model
    out: dict = {"gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                 "torch": torch.__version__, "settings": adapter.speed_settings()}
    items = adapter.prepare_text(Pope.throughput_requests(batches[0]))
    with torch.inference_mode():
        pixels = torch.stack([p.pixels[0] for p in items]).to(args.device)
        graphs = m.use_cuda_graphs
        m.use_cuda_graphs = False
        vision_eager = lambda: m.image_features(pixels)  # noqa: E731 (profiled at the end, eager)
        out["vision"] = {"batch": len(items), "eager_s": median_time(vision_eager)}
        m.use_cuda_graphs = graphs
        out["vision"]["graphed_s"] = median_time(lambda: m.image_features(pixels))
        feats = m.image_features(pixels)
        embeds = [adapter.mmu_embeddings(p.ids, feats[i:i + 1])[0] for i, p in enumerate(items)]
        lengths = torch.tensor([len(e) for e in embeds], device=args.device)
        padded = torch.nn.utils.rnn.pad_sequence(embeds, batch_first=True)
        out["prefill"] = {"batch": len(items), "lengths": lengths.tolist(),
                          "padded_s": median_time(lambda: m.prefill(padded, "mmu", lengths))}
        same = padded[:, :int(lengths.min())]
        out["prefill"]["unpadded_same_length_s"] = median_time(lambda: m.prefill(same, "mmu"))
        print("vision", out["vision"]["eager_s"], out["vision"]["graphed_s"], "prefill", out["prefill"]["padded_s"],
              out["prefill"]["unpadded_same_length_s"], flush=True)
    out["model_only"] = {}
    for b in batches:
        items = adapter.prepare_text(Pope.throughput_requests(b))
        s = median_time(lambda: adapter.generate_prepared(items), repeats=3)
        out["model_only"][b] = {"seconds": s, "samples_per_s": b / s}
        print("model_only", b, out["model_only"][b], flush=True)
    out["t2i"] = {}
    for b in batches:
        requests = [Request(f"t2i_{i}", "A Picture", seed=i) for i in range(b)]
        s = median_time(lambda: adapter.generate_images(requests), repeats=2)
        out["t2i"][b] = {"seconds": s, "images_per_s": b / s}
        print("t2i", b, out["t2i"][b], flush=True)
    try:  # the towers under torch.compile (compile untimed), against the eager towers
        with torch.inference_mode():
            items = adapter.prepare_text(Pope.throughput_requests(batches[0]))
            pixels = torch.stack([p.pixels[0] for p in items]).to(args.device)
            m.use_cuda_graphs = False
            eager = m.image_features(pixels)
            t0 = time.perf_counter()
            compiled = torch.compile(m._image_features)
            first = compiled(pixels)
            sync()
            out["vision_compiled"] = {"compile_s": time.perf_counter() - t0,
                                      "seconds": median_time(lambda: compiled(pixels)),
                                      "max_abs_vs_eager": (first.float() - eager.float()).abs().max().item(),
                                      "eager_abs_max": eager.float().abs().max().item()}
            m.use_cuda_graphs = graphs
        print("vision_compiled", out["vision_compiled"], flush=True)
    except Exception as exc:  # a diagnostic: record why, keep the rest
        out["vision_compiled"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    # Profiled after every timing: torch's profiler slows each later launch of the process.
    with torch.inference_mode():
        m.use_cuda_graphs = False
        out["vision"]["profile"] = top(vision_eager)
        m.use_cuda_graphs = graphs
        out["prefill"]["profile"] = top(lambda: m.prefill(padded, "mmu", lengths))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "omnimamba_phases.json").write_text(json.dumps(out, indent=2) + "\n")
    for part in ("vision", "prefill"):
        print(part)
        for row in out[part]["profile"]["ops"]:
            print(f"  {row['self_device_ms']:8.2f} ms {row['calls']:5d}  {row['op']}  {row['shapes']}")


if __name__ == "__main__":
    main()
