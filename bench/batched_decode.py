"""OmniMamba's batched decode step (9..MAX_GEMM_ROWS rows: text-to-image at batch 16 and 32, batched
understanding) with fused.py's tensor-core norm-GEMM kernels against the unfused step (mamba-ssm's norm,
conv and state-update kernels around cuBLAS). GPU, full size, random weights.

    python -m bench.batched_decode --out <folder> [--batches 16,32,64] [--no-sweep]

1. `gemm_sweep`: the GEMM kernel over (BLOCK_N, BLOCK_K, num_warps, num_stages) at 16 rows, per shape
   (in_proj with its conv epilogue, out_proj with its gated norm, the image head), against norm kernel +
   cuBLAS (+ the conv update), each call on another weight matrix so that they come from HBM. Sets
   fused.GEMM_CONFIGS to the fastest; the rest of the run uses them.
2. `rows_check`: every kernel against the unfused ops for 1..MAX_GEMM_ROWS rows, bf16 (worst relative error).
3. `agreement`: batch-16 teacher-forced T2I decode logits. fp32: the fused kernels against the PyTorch
   path; bf16: the fused step and the unfused kernel step (cuBLAS), each against the fp32 PyTorch path.
4. `step_ms`: one CUDA-graph T2I decode step per batch, fused (GEMV / GEMM) and unfused.
5. `t2i`: images/s of `generate_images` (VQ decode included) per batch, fused and unfused, each warmed at
   its batch.
Writes batched_decode.json into --out.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from omnibench.models.omnimamba import fused
from omnibench.protocol import Request

from .omnimamba_gpu import build, configure, fused_rows_check, graph_ms, rel_err

# out_features, in_features, kind, weights cycled per timed call (together larger than the 50 MB L2)
SHAPES = {"in_proj": (8512, 2048, "conv", 24), "out_proj": (2048, 4096, "gated", 48),
          "img_head": (16384, 2048, "plain", 8)}


@torch.inference_mode()
def gemm_sweep(rows: int = 16) -> dict:
    from omnibench.models.omnimamba.ssd import conv_update_triton, kernels

    g = torch.Generator(device="cuda").manual_seed(11)
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    result = {}
    for name, (n, k, kind, count) in SHAPES.items():
        ws = [torch.randn(n, k, generator=g, **bf16) * k ** -0.5 for _ in range(count)]
        x, z = torch.randn(rows, k, generator=g, **bf16), torch.randn(rows, k, generator=g, **bf16)
        res = torch.randn(rows, k, generator=g, device="cuda")
        nw = (torch.rand(k, generator=g, device="cuda") + 0.5).to(torch.bfloat16)
        lo, c = 4096, 4352  # in_proj: z | xBC (the conv channels) | dt
        window = torch.randn(rows, c, 4, generator=g, **bf16)
        cw, cb = torch.randn(c, 4, generator=g, **bf16) * 0.5, torch.randn(c, generator=g, **bf16)

        def unfused(w):
            if kind == "gated":
                h = kernels().gated_rms_norm(x, nw, None, z=z, eps=1e-5, group_size=k, norm_before_gate=False)
            else:
                h = kernels().add_rms_norm(x, nw, None, residual=res, prenorm=True, residual_in_fp32=True,
                                           eps=1e-5, is_rms_norm=True)[0]
            out = torch.nn.functional.linear(h, w)
            if kind == "conv":
                out[:, lo:lo + c] = conv_update_triton(out[:, lo:lo + c], window, cw, cb)
            return out

        def fused_call(w, config):
            if kind == "gated":
                return fused.gated_norm_linear(x, z, nw, 1e-5, w, config=config)
            conv = (window, cw, cb, lo) if kind == "conv" else None
            return fused.norm_linear(x, res, nw, 1e-5, w, config=config, conv=conv)[0]

        start = window.clone()
        ref = unfused(ws[0])
        window.copy_(start)
        base_us = 1e3 * graph_ms(lambda: [unfused(w) for w in ws]) / count
        rows_out = [{"impl": "norm kernel + cuBLAS" + (" + conv update" if kind == "conv" else ""), "us": base_us,
                     "tb_per_s": n * k * 2 / base_us / 1e6}]
        for block_n in (16, 32, 64, 128):
            for block_k in (128, 256):
                for warps, stages in ((4, 3), (4, 4), (8, 4)):
                    config = (block_n, block_k, warps, stages)
                    try:
                        window.copy_(start)
                        err = rel_err(fused_call(ws[0], config), ref)
                        us = 1e3 * graph_ms(lambda: [fused_call(w, config) for w in ws]) / count
                        rows_out.append({"impl": "fused", "config": list(config), "us": us,
                                         "tb_per_s": n * k * 2 / us / 1e6, "rel_err_vs_unfused": err})
                    except Exception as exc:  # a config that does not compile or run is recorded, not fatal
                        rows_out.append({"impl": "fused", "config": list(config),
                                         "error": str(exc).splitlines()[0][:200]})
        ok = [r for r in rows_out if r["impl"] == "fused" and "us" in r and r["rel_err_vs_unfused"] < 1e-2]
        best = min(ok, key=lambda r: r["us"])
        fused.GEMM_CONFIGS[(n, k)] = tuple(best["config"])
        result[name] = {"out_features": n, "in_features": k, "rows": rows, "kind": kind, "weights_cycled": count,
                        "unfused_us": base_us, "best": best, "configs": rows_out}
        print(json.dumps({name: {"unfused_us": base_us, "best": best}}), flush=True)
        del ws
    return result


def t2i_start(model, batch: int):
    """A T2I decode state after a random caption prefill, and the first tokens."""
    ids = torch.randint(0, 1000, (batch, model.config.caption_len + 4), device="cuda",
                        generator=torch.Generator(device="cuda").manual_seed(batch))
    return model.prefill(model.caption_embeddings(ids), "t2i")


@torch.inference_mode()
def forced(model, start, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of each step fed `tokens` (steps, b) from a copy of `start`."""
    from .omnimamba_gpu import clone_state
    state = clone_state(start)
    return torch.stack([model.step(state, t) for t in tokens])


@torch.inference_mode()
def agreement(batch: int = 16, steps: int = 32) -> dict:
    model = build(torch.float32)
    configure(model, use_fused_decode=False)
    model.set_kernels(False)
    start, _ = t2i_start(model, batch)
    tokens = torch.randint(0, model.config.image_vocab_size, (steps, batch), device="cuda",
                           generator=torch.Generator(device="cuda").manual_seed(2))
    ref = forced(model, start, tokens)
    out = {"batch": batch, "steps": steps, "route": "t2i"}
    model.set_kernels(True)
    configure(model, use_fused_decode=True)
    out["fp32_fused_vs_torch_rel_err"] = rel_err(forced(model, start, tokens), ref)
    model.to(torch.bfloat16)
    start = type(start)([t.bfloat16() for t in start.conv], [t.bfloat16() for t in start.ssm], start.position, "t2i")
    configure(model, use_fused_decode=True)
    fused_logits = forced(model, start, tokens)
    configure(model, use_fused_decode=False)
    unfused_logits = forced(model, start, tokens)
    out["bf16_fused_vs_fp32_rel_err"] = rel_err(fused_logits, ref)
    out["bf16_unfused_vs_fp32_rel_err"] = rel_err(unfused_logits, ref)
    out["bf16_fused_vs_unfused_rel_err"] = rel_err(fused_logits, unfused_logits)
    out["bf16_fused_over_unfused_error"] = out["bf16_fused_vs_fp32_rel_err"] / out["bf16_unfused_vs_fp32_rel_err"]
    out["bf16_argmax_agree_fused_vs_unfused"] = (fused_logits.argmax(-1) == unfused_logits.argmax(-1)).float().mean().item()
    del model
    torch.cuda.empty_cache()
    return out


@torch.inference_mode()
def step_ms(model, batches: list[int], unfused: bool) -> dict:
    out = {}
    for b in batches:
        configure(model, use_fused_decode=not unfused)
        start, logits = t2i_start(model, b)
        token = logits.argmax(-1)
        state = start
        for _ in range(5):  # capture + warm-up at this batch
            token = model.step(state, token).argmax(-1)
        torch.cuda.synchronize()
        t0, n = time.perf_counter(), 100
        for _ in range(n):
            token = model.step(state, token).argmax(-1)
        torch.cuda.synchronize()
        out[b] = 1e3 * (time.perf_counter() - t0) / n
    return out


def t2i_rate(adapter, batch: int, repeats: int = 3) -> dict:
    requests = [Request(f"t2i_{i}", "A Picture", seed=i) for i in range(batch)]
    adapter.generate_images(requests)  # warm at this batch (graph capture, autotune)
    adapter.generate_images(requests)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        adapter.generate_images(requests)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    s = sorted(times)[len(times) // 2]
    return {"seconds": s, "images_per_s": batch / s}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--batches", default="16,32,64")
    parser.add_argument("--step-batches", default="1,8,16,32")
    parser.add_argument("--no-sweep", action="store_true", help="keep fused.GEMM_CONFIGS as committed")
    args = parser.parse_args()
    import triton

    from omnibench.models.omnimamba import OmniMambaAdapter
    out: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                 "max_rows_gemv": fused.MAX_ROWS, "max_rows_gemm": fused.MAX_GEMM_ROWS}
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every part: a later failure keeps what was measured
        (dest / "batched_decode.json").write_text(json.dumps(out, indent=2) + "\n")

    if not args.no_sweep:
        out["gemm_sweep"] = gemm_sweep()
        save()
    out["gemm_configs"] = {f"{n}x{k}": list(c) for (n, k), c in fused.GEMM_CONFIGS.items()}
    out["rows_check"] = fused_rows_check()
    print(json.dumps({"rows_check": out["rows_check"]}), flush=True)
    out["agreement"] = agreement()
    print(json.dumps({"agreement": out["agreement"]}), flush=True)
    save()
    adapter = OmniMambaAdapter(device="cuda", dtype="bfloat16", preset="full")
    m = adapter.model
    step_batches = [int(b) for b in args.step_batches.split(",")]
    out["step_ms"] = {"fused": step_ms(m, step_batches, unfused=False),
                      "unfused": step_ms(m, step_batches, unfused=True)}
    print(json.dumps({"step_ms": out["step_ms"]}), flush=True)
    save()
    out["t2i"] = {}
    for name, unfused in (("fused", False), ("unfused", True)):
        configure(m, use_fused_decode=not unfused)
        out["t2i"][name] = {b: t2i_rate(adapter, int(b)) for b in args.batches.split(",")}
        print(json.dumps({"t2i": {name: out["t2i"][name]}}), flush=True)
        save()
    configure(m, use_fused_decode=True)
    save()


if __name__ == "__main__":
    main()
