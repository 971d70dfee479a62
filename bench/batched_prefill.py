"""GPU check of OmniMamba's batched understanding path (full 1.3B size, random weights).

    python -m bench.batched_prefill --out <folder>

1. Agreement: prompts of different lengths (POPE- and MMMU-shaped, with their images) read in one
   right-padded prefill against each read alone, on mamba-ssm's kernels: last-position logits, the SSM
   and conv states, and the greedy answers (fp32 and bf16; in bf16 a batch's GEMMs may sum in another
   order than a single row's, so ties can flip; the fp32 difference shows the padding itself adds nothing).
2. Where the time of one POPE-shaped batch of 16 goes: the profiler's top CUDA kernels of `generate_text`,
   and of one text-to-image batch of 16 (`generate_image_tokens`), warmed at the same shapes first.
Writes batched_prefill.json into --out.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from omnibench.models.omnimamba import OmniMambaAdapter
from omnibench.protocol import Request
from omnibench.tasks.mmmu import MMMU
from omnibench.tasks.pope import Pope


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-30)).item()


def mixed_requests() -> list[Request]:
    return Pope.throughput_requests(6) + MMMU.throughput_requests(2)


def agreement(dtype: str, device: str, preset: str) -> dict:
    adapter = OmniMambaAdapter(device=device, dtype=dtype, preset=preset)  # built outside inference mode
    with torch.inference_mode():
        return _agreement(adapter, device)


def _agreement(adapter: OmniMambaAdapter, device: str) -> dict:
    m, requests = adapter.model, mixed_requests()
    feats = m.image_features(m.vision_backbone.preprocess([r.images[0] for r in requests]))
    embeds = [adapter.mmu_embeddings(r.prompt, feats[i:i + 1])[0] for i, r in enumerate(requests)]
    lengths = torch.tensor([len(e) for e in embeds], device=device)
    state, logits = m.prefill(torch.nn.utils.rnn.pad_sequence(embeds, batch_first=True), "mmu", lengths)
    out = {"lengths": lengths.tolist(), "logits_rel": [], "ssm_rel_max": [], "conv_rel_max": [], "argmax_same": []}
    for i, e in enumerate(embeds):
        alone, first = m.prefill(e[None], "mmu", lengths[i:i + 1])
        out["logits_rel"].append(rel_err(logits[i], first[0]))
        out["ssm_rel_max"].append(max(rel_err(a[i], b[0]) for a, b in zip(state.ssm, alone.ssm)))
        out["conv_rel_max"].append(max(rel_err(a[i], b[0]) for a, b in zip(state.conv, alone.conv)))
        out["argmax_same"].append(bool(logits[i].argmax() == first[0].argmax()))
    long = [Request(r.sample_id, r.prompt, r.images, {"max_new_tokens": 16}) for r in requests]
    batched = adapter.generate_text(long)
    alone_answers = [adapter.generate_text([r])[0] for r in long]
    out["answers_same"] = sum(a == b for a, b in zip(batched, alone_answers))
    out["answers"] = len(long)
    return out


def top_kernels(fn, n: int = 15) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile
    cuda = torch.cuda.is_available()
    fn()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:n]
    return [{"kernel": e.key[:120], "calls": e.count, "cuda_ms": e.device_time_total / 1e3} for e in rows]


def profiles(device: str, preset: str) -> dict:
    adapter = OmniMambaAdapter(device=device, dtype="bfloat16", preset=preset)
    pope = Pope.throughput_requests(16)
    t2i = [Request(f"t2i_{i}", "A Picture", seed=i) for i in range(16)]
    return {"pope_batch16_generate_text": top_kernels(lambda: adapter.generate_text(pope)),
            "t2i_batch16_image_tokens": top_kernels(lambda: adapter.generate_image_tokens(t2i))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="full", help="full (1.3B, random weights) or tiny (a CPU dry run)")
    args = parser.parse_args()
    result = {"gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "torch": torch.__version__, "preset": args.preset,
              "float32": agreement("float32", args.device, args.preset),
              "bfloat16": agreement("bfloat16", args.device, args.preset), "profiles": profiles(args.device, args.preset)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "batched_prefill.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "profiles"}, indent=1))
    for name, rows in result["profiles"].items():
        print(name)
        for r in rows:
            print(f"  {r['cuda_ms']:9.2f} ms  {r['calls']:6d}  {r['kernel']}")


if __name__ == "__main__":
    main()
