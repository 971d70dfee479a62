"""How often bf16 and fp32 greedy decoding agree, per model (full size, random weights, on the GPU):
the same seeded weights built once in float32 and once cast to bfloat16, each prompt read by the
adapter's `prefill` and decoded by its `decode_step` (the path evaluation and the speed sweep share),
`--steps` greedy tokens after `--prompt-len`-token prompts, for `--prompts` prompts.

    python -m bench.precision --out <folder> [--models omnimamba,showo,janusflow]

Writes precision.json: per model and mode, the share of prompts whose greedy tokens differ anywhere, the
first step where they part (median over the prompts that part), the first-step logits' relative
difference, and the top-2 logit gap of fp32 where they part (a near-tie is where rounding decides).
Random weights give flatter logits than a trained checkpoint: read the figures as an upper bound.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from omnibench.registry import get_model_class


def greedy(adapter, ids: torch.Tensor, steps: int) -> tuple[list[int], torch.Tensor, list[torch.Tensor]]:
    state = adapter.prefill(ids, max_new_tokens=steps)
    logits = state.logits.float()
    first, out, all_logits = logits.clone(), [], [logits]
    for i in range(steps):
        token = logits.argmax(-1)
        out.append(int(token.item()))
        if i + 1 < steps:
            logits = adapter.decode_step(state, token).float()
            all_logits.append(logits)
    return out, first, all_logits


def compare(model: str, mode: str, prompts: int, prompt_len: int, steps: int) -> dict:
    cls = get_model_class(model)
    result = {"model": model, "mode": mode, "prompts": prompts, "prompt_len": prompt_len, "steps": steps}
    adapters = {}
    for dtype in ("float32", "bfloat16"):
        adapters[dtype] = cls(device="cuda", dtype=dtype, preset="full", mode=mode)
    lengths, rel_first, gaps, differ = [], [], [], 0
    start = time.perf_counter()
    for p in range(prompts):
        ids = adapters["float32"].speed_context(prompt_len + p)[:, p:]  # 50 different contexts of one length
        t32, f32, l32 = greedy(adapters["float32"], ids, steps)
        t16, f16, _ = greedy(adapters["bfloat16"], ids, steps)
        rel_first.append(((f16 - f32).abs().max() / f32.abs().max()).item())
        if t32 != t16:
            differ += 1
            at = next(i for i, (a, b) in enumerate(zip(t32, t16)) if a != b)
            lengths.append(at)
            top2 = l32[at][0].topk(2).values
            gaps.append((top2[0] - top2[1]).item())
    result.update({
        "share_of_prompts_whose_tokens_differ": differ / prompts,
        "first_divergence_step_median": sorted(lengths)[len(lengths) // 2] if lengths else None,
        "first_divergence_steps": lengths,
        "fp32_top2_gap_where_they_part_median": sorted(gaps)[len(gaps) // 2] if gaps else None,
        "first_step_logits_rel_diff_median": sorted(rel_first)[len(rel_first) // 2],
        "first_step_logits_rel_diff_max": max(rel_first),
        "seconds": round(time.perf_counter() - start, 1),
    })
    del adapters
    torch.cuda.empty_cache()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="omnimamba,showo,janusflow")
    ap.add_argument("--mode", default="best", choices=["best", "as_published"])
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--prompt-len", type=int, default=600)
    ap.add_argument("--steps", type=int, default=64)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import importlib.metadata as md
    versions = {}
    for name in ("torch", "transformers", "triton", "mamba-ssm", "causal-conv1d"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    report = {"gpu": torch.cuda.get_device_name(0), "python": platform.python_version(), "packages": versions,
              "command": f"python -m bench.precision --out {args.out} --models {args.models} --mode {args.mode} "
                         f"--prompts {args.prompts} --prompt-len {args.prompt_len} --steps {args.steps}",
              "results": []}
    for model in args.models.split(","):
        try:
            report["results"].append(compare(model, args.mode, args.prompts, args.prompt_len, args.steps))
        except Exception as exc:  # one model failing must not lose the others' figures
            report["results"].append({"model": model, "error": f"{type(exc).__name__}: {exc}"})
        print(json.dumps(report["results"][-1]), flush=True)
        (out / "precision.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
