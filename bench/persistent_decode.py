"""GPU check of the persistent whole-stack decode step (models/omnimamba/persistent.py) at full size.

    python -m bench.persistent_decode --out <folder>

Random full-size OmniMamba-1.3B weights, batch 1, MMU route. In one process:
1. fp32: teacher-forced logits of the persistent step against the PyTorch path and against fused.py's
   three-kernel step (600-token prompt, 64 steps), and one step with the barrier kernel against the same
   kernel launched once per phase (`sync=False`): the barrier must change nothing (bit for bit).
2. bf16 (SSM state bf16): decode-only logits from one bf16 prefill state, persistent vs PyTorch and the
   three-kernel step vs PyTorch, side by side (reports/omnimamba_gpu/ has the summation-order floor).
3. Decode latency (CUDA-graph steps, bench.omnimamba_gpu.decode_latency) of the three-kernel step and of
   the persistent step over `--configs` at the first context, then the persistent step's best config at
   every context; against the weight-read floor measured here.
Writes persistent_decode.json into --out; prints each result as it comes.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.omnimamba_gpu import build, clone_state, configure, decode_bytes, decode_latency, forced_logits, hbm_bandwidth, rel_err
from omnibench.models.omnimamba import persistent


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    per = [rel_err(x, y) for x, y in zip(a, b)]
    return {"max": max(per), "mean": sum(per) / len(per), "argmax_agree": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


@torch.inference_mode()
def decode_only(model, start, tokens, persistent_decode: bool, kernels: bool) -> torch.Tensor:
    configure(model, persistent_decode=persistent_decode)
    return forced_logits(model, None, tokens, kernels, start)


def recorder(out_dir: str, name: str):
    """(results, emit): emit(key, value) adds one result, prints it with the seconds since the start, and
    rewrites out_dir/name with everything so far (a later crash or timeout keeps what came before)."""
    out: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    t0 = time.perf_counter()

    def emit(key, value):
        out[key] = value
        print(json.dumps({key: value, "t": round(time.perf_counter() - t0, 1)}), flush=True)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / name).write_text(json.dumps(out, indent=2))

    return out, emit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--contexts", default="1024,16384,100000")
    ap.add_argument("--configs", default="8,4,32,8;4,4,32,8;8,4,32,4;4,2,32,4;16,8,32,8",
                    help="persistent.CONFIG tuples (BLOCK_N in_proj, BLOCK_N out_proj, BLOCK_P, warps), ';'-separated")
    args = ap.parse_args()
    out, emit = recorder(args.out, "persistent_decode.json")
    model = build(torch.float32)
    configure(model, use_fused_decode=True, fold_conv=True, ssm_state_dtype="model", pdl=False)
    g = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (1, 600), device="cuda", generator=g)
    tokens = torch.randint(0, model.config.vocab_size, (64,), generator=torch.Generator().manual_seed(2)).tolist()
    with torch.inference_mode():
        embeds = model.with_mmu_positions(model.text_embeddings(ids))
        model.set_kernels(False)
        start, _ = model.prefill(embeds, "mmu")
        ref = decode_only(model, start, tokens, False, kernels=False)
        pers = decode_only(model, start, tokens, True, kernels=True)
        three = decode_only(model, start, tokens, False, kernels=True)
        emit("fp32_persistent_vs_torch", compare(pers, ref))
        emit("fp32_three_kernels_vs_torch", compare(three, ref))
        emit("fp32_persistent_vs_three_kernels", compare(pers, three))
        # the barrier kernel against one launch a phase, eager (no graph), from one state
        model.set_kernels(True)
        model.use_cuda_graphs = False
        configure(model, persistent_decode=True)
        outs = []
        for sync in (True, False):
            persistent.SYNC = sync
            s = clone_state(start)
            logits = torch.cat([model.step(s, torch.tensor([t], device="cuda")) for t in tokens[:4]])
            outs.append((logits, s))
        persistent.SYNC = None
        model.use_cuda_graphs = True
        (la, sa), (lb, sb) = outs
        emit("fp32_barrier_vs_per_phase_launches_bit_equal",
             bool(torch.equal(la, lb) and all(torch.equal(x, y) for x, y in zip(sa.conv + sa.ssm, sb.conv + sb.ssm))))
        model.to(torch.bfloat16)
        configure(model, ssm_state_dtype="model")
        embeds = model.with_mmu_positions(model.text_embeddings(ids))
        model.set_kernels(False)
        start, _ = model.prefill(embeds, "mmu")
        ref = decode_only(model, start, tokens, False, kernels=False)
        emit("bf16_persistent_vs_torch", compare(decode_only(model, start, tokens, True, kernels=True), ref))
        emit("bf16_three_kernels_vs_torch", compare(decode_only(model, start, tokens, False, kernels=True), ref))
    model.set_kernels(True)
    bw = hbm_bandwidth()
    floor_ms = 1e3 * decode_bytes(model) / bw
    emit("weight_read_floor_ms", floor_ms)
    contexts = [int(c) for c in args.contexts.split(",")]
    configure(model, persistent_decode=False)
    row = decode_latency(model, contexts[0])
    emit("three_kernels", {**row, "vs_floor": row["decode_ms_per_token"] / floor_ms})
    best = None
    for text in args.configs.split(";"):
        config = tuple(int(v) for v in text.split(","))
        persistent.CONFIG = config
        configure(model, persistent_decode=True)
        try:
            row = decode_latency(model, contexts[0])
        except Exception as e:  # a config that does not compile (registers, shared memory): next one
            emit(f"persistent_{text}", {"error": repr(e)[:300]})
            continue
        row["vs_floor"] = row["decode_ms_per_token"] / floor_ms
        emit(f"persistent_{text}", row)
        if best is None or row["decode_ms_per_token"] < best[1]:
            best = (config, row["decode_ms_per_token"])
    persistent.CONFIG = best[0]
    emit("best_config", list(best[0]))
    configure(model, persistent_decode=True)
    rows = []
    for ctx in contexts:
        row = decode_latency(model, ctx)
        row["vs_floor"] = row["decode_ms_per_token"] / floor_ms
        rows.append(row)
        emit(f"persistent_best_{ctx}", row)
    emit("latency", rows)


if __name__ == "__main__":
    main()
