"""GPU check of the Transformer baselines' static-KV-cache decode (Show-o, JanusFlow; full size, random
weights, bf16): CUDA-graph decode against the same step run eagerly (4k context, past one buffer growth),
static "best" against "as_published", and the single-query attention kernel at long context.

    python -m bench.static_decode --out <folder>
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def graph_vs_eager(cls, length: int, steps: int = 600) -> dict:
    best = cls(device="cuda", dtype="bfloat16", preset="full", mode="best")
    ids = best.speed_context(length)
    g, e = best.prefill(ids), best.prefill(ids)
    e.use_graph = False
    tok, worst, t_g, t_e, agree = torch.tensor([7]), 0.0, [], [], 0
    for i in range(steps):
        torch.cuda.synchronize(); t0 = time.perf_counter(); lg = best.decode_step(g, tok)
        torch.cuda.synchronize(); t1 = time.perf_counter(); le = best.decode_step(e, tok)
        torch.cuda.synchronize(); t2 = time.perf_counter()
        if i >= 4:
            t_g.append(t1 - t0), t_e.append(t2 - t1)
        worst = max(worst, rel(lg, le))
        agree += int(lg.argmax(-1).item() == le.argmax(-1).item())
        tok = le.argmax(-1).cpu()
    out = {"graph_captured": g.graph is not None, "graph_error": g.graph_error, "capacity": g.capacity,
           "graph_vs_eager_max_rel_diff": worst, "argmax_agree": agree / steps,
           "ms_per_token_graph_wallclock": sorted(t_g)[len(t_g) // 2] * 1e3,
           "ms_per_token_eager_wallclock": sorted(t_e)[len(t_e) // 2] * 1e3}
    pub = cls(device="cuda", dtype="bfloat16", preset="full", mode="as_published")
    s, p = best.prefill(ids), pub.prefill(ids)
    tok, worst = torch.tensor([7]), rel(s.logits, p.logits)
    for _ in range(8):
        ls, lp = best.decode_step(s, tok), pub.decode_step(p, tok)
        worst = max(worst, rel(ls, lp))
        tok = lp.argmax(-1).cpu()
    out["best_vs_as_published_max_rel_diff"] = worst
    del best, pub, g, e, s, p
    torch.cuda.empty_cache()
    return out


def attention_kernels(length: int, heads: int, head_dim: int) -> dict:
    """One query over `length` cached keys: SDPA with an additive mask (what the step uses) against
    plain matmul + softmax, median of 50 CUDA-event timings each."""
    q = torch.randn(1, heads, 1, head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, heads, length, head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    mask = torch.zeros(1, 1, 1, length, device="cuda", dtype=torch.bfloat16)

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def matmul():
        w = torch.softmax((q @ k.transpose(-1, -2)).float() * head_dim ** -0.5 + mask, -1).to(v.dtype)
        return w @ v

    times = {}
    for name, fn in (("sdpa_mask", sdpa), ("matmul_softmax", matmul)):
        for _ in range(5):
            fn()
        samples = []
        for _ in range(50):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); fn(); b.record(); torch.cuda.synchronize()
            samples.append(a.elapsed_time(b))
        times[f"{name}_ms"] = sorted(samples)[25]
    times["agree_max_abs"] = (sdpa() - matmul()).abs().max().item()
    times["kv_bytes"] = 2 * k.numel() * k.element_size()
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--length", type=int, default=4096)
    args = parser.parse_args()
    from omnibench.models.janusflow import JanusFlowAdapter
    from omnibench.models.showo import ShowoAdapter

    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for cls in (ShowoAdapter, JanusFlowAdapter):
        result[cls.name] = graph_vs_eager(cls, args.length)
        print(cls.name, result[cls.name], flush=True)
    for length in (16384, 100000):
        for heads, dim in ((32, 64), (16, 128)):
            key = f"attention_L{length}_h{heads}x{dim}"
            result[key] = attention_kernels(length, heads, dim)
            print(key, result[key], flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "static_decode_gpu.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
