"""GPU check of OmniMamba's two execution paths and its decode speed (full 1.3B size, random weights).

    python -m bench.omnimamba_gpu --out <folder>

1. Decode kernels (fused.py) at the model's shapes against what they replace: the in_proj GEMV with the
   conv update in its epilogue against the GEMV then `conv_update_triton` (bit for bit), the state update
   against `ssd_step` and mamba-ssm's `selective_state_update` (fp32 and bf16 state), and its time.
2. Agreement: the same model run with the kernels + CUDA graphs and with the plain-PyTorch path, in fp32
   and in bf16 with each SSM state dtype: prefill logits, teacher-forced decode logits, 64 greedy tokens,
   and the bf16 summation-order floor.
3. Decode latency per token at batch 1 after 1k / 16k / 100k tokens of context (CUDA-graph steps, the
   default step: three kernels a layer, no PDL, SSM state in the model dtype), against the weight-read
   floor (bytes read per step / measured device-to-device bandwidth); at the first context also the other
   steps (`STEP_VARIANTS`: PDL, fp32 state, the previous four-kernel step).
Writes omnimamba_gpu.json into --out.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from omnibench.models.omnimamba import fused
from omnibench.models.omnimamba.checkpoint import random_full
from omnibench.models.omnimamba.modeling_omnimamba import DecodeState, OmniMamba, OmniMambaConfig


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def build(dtype: torch.dtype) -> OmniMamba:
    return random_full("cuda", dtype)


def hbm_bandwidth() -> float:
    """Device-to-device copy of 1 GiB: bytes read + written per second."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    n, t0 = 20, time.perf_counter()
    for _ in range(n):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * src.numel() * n / (time.perf_counter() - t0)


def decode_bytes(model: OmniMamba) -> int:
    """Weights one MMU decode step reads: every block, the final norm, the text head (tied table)."""
    lm = model.lm
    params = list(lm.backbone.layers.parameters()) + [lm.backbone.norm_f.weight, lm.lm_head.weight]
    return sum(p.numel() * p.element_size() for p in params)


@torch.inference_mode()
def conv_check() -> float:
    """The Triton conv-update kernel against the plain-PyTorch step, on a strided input like in_proj's."""
    from omnibench.models.omnimamba.ssd import conv_update_triton

    g = torch.Generator(device="cuda").manual_seed(2)
    big = torch.randn(3, 5000, device="cuda", generator=g)
    x = big[:, 100:4452]
    state = torch.randn(3, 4352, 4, device="cuda", generator=g)
    w, b = torch.randn(4352, 4, device="cuda", generator=g), torch.randn(4352, device="cuda", generator=g)
    ref_state = torch.cat([state[..., 1:], x[..., None]], -1)
    ref = torch.nn.functional.silu((ref_state * w).sum(-1) + b)
    out = conv_update_triton(x, state, w, b)
    return max((out - ref).abs().max().item(), (state - ref_state).abs().max().item())


@torch.inference_mode()
def decode_kernel_checks(cfg: OmniMambaConfig, device: str = "cuda", timed: bool = True) -> dict:
    """fused.py's decode kernels at the model's decode shapes against the ops they replace: the in_proj
    GEMV with the conv epilogue against the GEMV then `conv_update_triton` (bit for bit), the state update
    against `ssd_step` and (where it runs) mamba-ssm's `selective_state_update`; then (`timed`) the state
    update's time per call against mamba-ssm's. Runs on CPU under Triton's interpreter for a small `cfg`."""
    import math

    import torch.nn.functional as F

    from omnibench.models.omnimamba.ssd import conv_update_triton, kernels, ssd_step, use_kernels

    g = torch.Generator(device=device).manual_seed(7)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g, device=device).to(dtype)

    di, gn, h, p, d_state = cfg.d_inner, cfg.ngroups * cfg.d_state, cfg.nheads, cfg.headdim, cfg.d_state
    k, c = cfg.d_model, di + 2 * gn  # conv channels: features [di, di + c) of in_proj's output
    n = di + c + h
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        worst, windows_equal = 0.0, True
        for rows in (1, 3, fused.KERNEL_ROWS):
            x, res, nw = randn(rows, k, dtype=dtype), randn(rows, k), (randn(k).abs() + 0.5).to(dtype)
            w, window = (randn(n, k) * k ** -0.5).to(dtype), randn(rows, c, 4, dtype=dtype)
            cw, cb = (randn(c, 4) * 0.5).to(dtype), randn(c, dtype=dtype)
            ref, _ = fused.norm_linear(x, res, nw, 1e-5, w)
            ref_window = window.clone()
            ref[:, di:di + c] = conv_update_triton(ref[:, di:di + c], ref_window, cw, cb)
            got_window = window.clone()
            got, _ = fused.norm_linear(x, res, nw, 1e-5, w, conv=(got_window, cw, cb, di))
            worst = max(worst, (got.float() - ref.float()).abs().max().item())
            windows_equal = windows_equal and torch.equal(got_window, ref_window)
        out[f"in_proj_conv_epilogue_{str(dtype)[6:]}"] = {"max_abs_diff_vs_gemv_then_conv_update": worst,
                                                          "conv_windows_equal": windows_equal}
    mamba = use_kernels(torch.device(device))
    A = -torch.exp(torch.rand(h, generator=g, device=device) * math.log(16))

    def views(proj):  # x, dt, B, C as strided views of the in_proj output, as a step passes them
        return (proj[:, di:2 * di].unflatten(-1, (h, p)), proj[:, di + c:],
                proj[:, 2 * di:2 * di + gn].unflatten(-1, (cfg.ngroups, -1)),
                proj[:, 2 * di + gn:2 * di + 2 * gn].unflatten(-1, (cfg.ngroups, -1)))

    def theirs(state, x, dt, B, C, D, dt_bias):
        return kernels().state_update(
            state, x, dt[..., None].expand(-1, -1, p), A[:, None, None].expand(-1, p, d_state), B, C,
            D[:, None].expand(-1, p), dt_bias=dt_bias[:, None].expand(-1, p), dt_softplus=True)

    for io in (torch.float32, torch.bfloat16):
        for state_dtype in ((torch.float32,) if io == torch.float32 else (torch.bfloat16, torch.float32)):
            for batch in (1, 16):
                x, dt, B, C = views(randn(batch, n, dtype=io))
                D, dt_bias = randn(h, dtype=io), (randn(h) - 4).to(io)
                start = randn(batch, h, p, d_state, dtype=state_dtype)
                ref = start.to(torch.float32, copy=True)
                y_ref = ssd_step(ref, x, F.softplus(dt.float() + dt_bias.float()), A, B, C, D)
                got = start.clone()
                y = fused.state_update(got, x, dt, A, B, C, D, dt_bias)
                row = {"y_rel_err_vs_ssd_step": rel_err(y, y_ref), "state_rel_err_vs_ssd_step_fp32": rel_err(got, ref),
                       "state_bitwise_equal_to_ssd_step": (got == ref.to(state_dtype)).float().mean().item()}
                if mamba:
                    other = start.clone()
                    row["y_rel_err_vs_mamba_ssm"] = rel_err(y, theirs(other, x, dt, B, C, D, dt_bias))
                    row["state_equal_to_mamba_ssm"] = (got == other).float().mean().item()
                out[f"state_update_io_{str(io)[6:]}_state_{str(state_dtype)[6:]}_batch_{batch}"] = row
    if not timed:
        return out
    # Time per call, batch 1, bf16 io, one state per layer so that the states come from HBM.
    for state_dtype in (torch.bfloat16, torch.float32):
        states = [randn(1, h, p, d_state, dtype=state_dtype) for _ in range(cfg.n_layer)]
        x, dt, B, C = views(randn(1, n, dtype=torch.bfloat16))
        D, dt_bias = randn(h, dtype=torch.bfloat16), (randn(h) - 4).bfloat16()
        us = {"fused": 1e3 * graph_ms(lambda: [fused.state_update(s, x, dt, A, B, C, D, dt_bias)
                                               for s in states]) / len(states),
              "pdl": fused.pdl_enabled(torch.device(device))}
        if mamba:
            us["mamba_ssm"] = 1e3 * graph_ms(lambda: [theirs(s, x, dt, B, C, D, dt_bias) for s in states]) / len(states)
        out[f"state_update_us_per_call_state_{str(state_dtype)[6:]}"] = us
    return out


def replay_ms(graph: torch.cuda.CUDAGraph, reps: int) -> float:
    """Milliseconds per replay of a captured graph, after 3 untimed replays (CUDA events)."""
    for _ in range(3):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def graph_ms(fn, reps: int = 20) -> float:
    """Milliseconds per replay of `fn` captured in a CUDA graph (after a compile/warm-up call)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return replay_ms(graph, reps)


# out_features, in_features, gated, weights cycled per timed call (together larger than the 50 MB L2)
GEMV_SHAPES = {"in_proj": (8512, 2048, False, 48), "out_proj": (2048, 4096, True, 48),
               "lm_head": (50288, 2048, False, 8)}


@torch.inference_mode()
def gemv_sweep() -> dict:
    """The fused norm+GEMV kernels over (BLOCK_N, num_warps), against the unfused ops (mamba-ssm norm
    kernel, then cuBLAS), batch 1, bf16, each call on a different weight matrix so reads come from HBM
    as in a decode step. Sets fused.CONFIGS to the fastest configuration per shape."""
    import triton

    from omnibench.models.omnimamba.ssd import kernels

    g = torch.Generator(device="cuda").manual_seed(3)
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    result = {}
    for name, (n, k, gated, count) in GEMV_SHAPES.items():
        ws = [(torch.randn(n, k, generator=g, **bf16) * k ** -0.5) for _ in range(count)]
        x, z = torch.randn(1, k, generator=g, **bf16), torch.randn(1, k, generator=g, **bf16)
        res = torch.randn(1, k, generator=g, device="cuda")
        nw = (torch.rand(k, generator=g, device="cuda") + 0.5).to(torch.bfloat16)

        def unfused(w):
            if gated:
                h = kernels().gated_rms_norm(x, nw, None, z=z, eps=1e-5, group_size=k, norm_before_gate=False)
            else:
                h = kernels().add_rms_norm(x, nw, None, residual=res, prenorm=True, residual_in_fp32=True,
                                           eps=1e-5, is_rms_norm=True)[0]
            return torch.nn.functional.linear(h, w)

        def fused_call(w, config):
            if gated:
                return fused.gated_norm_linear(x, z, nw, 1e-5, w, config=config)
            return fused.norm_linear(x, res, nw, 1e-5, w, config=config)[0]

        ref = unfused(ws[0])
        base_us = 1e3 * graph_ms(lambda: [unfused(w) for w in ws]) / count
        rows = [{"impl": "norm kernel + cuBLAS", "us": base_us, "tb_per_s": n * k * 2 / base_us / 1e6}]
        for block_n in (1, 2, 4, 8, 16, 32):
            for warps in (1, 2, 4, 8, 16):
                per_thread = block_n * triton.next_power_of_2(k) / (32 * warps)
                if not 8 <= per_thread <= 128:
                    continue
                try:
                    err = rel_err(fused_call(ws[0], (block_n, warps)), ref)
                    us = 1e3 * graph_ms(lambda: [fused_call(w, (block_n, warps)) for w in ws]) / count
                    rows.append({"impl": "fused", "block_n": block_n, "num_warps": warps, "us": us,
                                 "tb_per_s": n * k * 2 / us / 1e6, "rel_err_vs_unfused": err})
                except Exception as exc:  # a config that does not compile or run is recorded, not fatal
                    rows.append({"impl": "fused", "block_n": block_n, "num_warps": warps,
                                 "error": str(exc).splitlines()[0][:200]})
        ok = [r for r in rows if r["impl"] == "fused" and "us" in r and r["rel_err_vs_unfused"] < 1e-2]
        best = min(ok, key=lambda r: r["us"])
        fused.CONFIGS[(n, k)] = (best["block_n"], best["num_warps"])
        result[name] = {"out_features": n, "in_features": k, "gated": gated, "weights_cycled": count,
                        "unfused_us": base_us, "best": best, "configs": rows}
        print(json.dumps({name: {"unfused_us": base_us, "best": best}}), flush=True)
        del ws
    return result


@torch.inference_mode()
def fused_rows_check() -> dict:
    """Fused kernels against the unfused ops for every batch size they take (1..KERNEL_ROWS), bf16, at the
    decode shapes and the T2I image head: worst relative error per shape."""
    from omnibench.models.omnimamba.ssd import kernels

    g = torch.Generator(device="cuda").manual_seed(5)
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    out = {}
    for name, (n, k, gated) in {"in_proj": (8512, 2048, False), "out_proj": (2048, 4096, True),
                                "lm_head": (50288, 2048, False), "img_head": (16384, 2048, False)}.items():
        w = torch.randn(n, k, generator=g, **bf16) * k ** -0.5
        nw = (torch.rand(k, generator=g, device="cuda") + 0.5).to(torch.bfloat16)
        worst = 0.0
        for rows in range(1, fused.KERNEL_ROWS + 1):
            x, z = torch.randn(rows, k, generator=g, **bf16), torch.randn(rows, k, generator=g, **bf16)
            res = torch.randn(rows, k, generator=g, device="cuda")
            if gated:
                got = fused.gated_norm_linear(x, z, nw, 1e-5, w)
                ref = kernels().gated_rms_norm(x, nw, None, z=z, eps=1e-5, group_size=k, norm_before_gate=False)
            else:
                got, res_out = fused.norm_linear(x, res, nw, 1e-5, w)
                ref, res_ref = kernels().add_rms_norm(x, nw, None, residual=res, prenorm=True, residual_in_fp32=True,
                                                      eps=1e-5, is_rms_norm=True)
                worst = max(worst, rel_err(res_out, res_ref))
            worst = max(worst, rel_err(got, torch.nn.functional.linear(ref, w)))
        out[name] = worst
    return out


def clone_state(state: DecodeState) -> DecodeState:
    return DecodeState([t.clone() for t in state.conv], [t.clone() for t in state.ssm], state.position.clone(),
                       state.route)


@torch.inference_mode()
def forced_logits(model: OmniMamba, embeds, tokens: list[int], kernels: bool, start=None) -> torch.Tensor:
    """Prefill (or continue from a copy of `start`) then feed `tokens`; logits of every position."""
    model.set_kernels(kernels)
    if start is None:
        state, logits = model.prefill(embeds, "mmu")
        out = [logits]
    else:
        state, out = clone_state(start), []
    for t in tokens:
        out.append(model.step(state, torch.tensor([t], device="cuda")))
    return torch.cat(out)


@torch.inference_mode()
def greedy(model: OmniMamba, embeds, steps: int, kernels: bool, gaps: list | None = None) -> list[int]:
    """Greedy tokens; `gaps` (if given) receives each step's top-1 minus top-2 logit."""
    model.set_kernels(kernels)
    state, logits = model.prefill(embeds, "mmu")
    tokens = []
    for _ in range(steps):
        top = logits[0].topk(2).values
        if gaps is not None:
            gaps.append(float(top[0] - top[1]))
        tokens.append(int(logits.argmax(-1)))
        if len(tokens) < steps:
            logits = model.step(state, torch.tensor(tokens[-1:], device="cuda"))
    return tokens


def divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    per = [rel_err(x, y) for x, y in zip(a, b)]
    return {"prefill": per[0], "decode_max": max(per[1:]), "decode_mean": sum(per[1:]) / len(per[1:]),
            "argmax_agree": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


class _ReorderedF:
    """torch.nn.functional, except that `linear` sums the two halves of K separately in fp32 and rounds
    once: the same function as cuBLAS's bf16 GEMM, with only the order of the fp32 sums changed."""

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    @staticmethod
    def linear(x, w, b=None):
        k = x.shape[-1] // 2
        lin = torch.nn.functional.linear
        out = lin(x[..., :k].float(), w[:, :k].float()) + lin(x[..., k:].float(), w[:, k:].float())
        return (out if b is None else out + b.float()).to(x.dtype)


@torch.inference_mode()
def summation_order_floor(model: OmniMamba, embeds, tokens: list[int]) -> dict:
    """The bf16 PyTorch path against itself with one change: every in_proj product summed in another
    order. How far two correct bf16 implementations of this model drift apart."""
    from omnibench.models.omnimamba import modeling_omnimamba

    ref = forced_logits(model, embeds, tokens, kernels=False)
    plain = greedy(model, embeds, len(tokens), kernels=False)
    saved = modeling_omnimamba.F
    modeling_omnimamba.F = _ReorderedF()
    try:
        other = forced_logits(model, embeds, tokens, kernels=False)
        reordered = greedy(model, embeds, len(tokens), kernels=False)
    finally:
        modeling_omnimamba.F = saved
    return {**compare(other, ref), "greedy_first_divergence": divergence(plain, reordered)}


def configure(model: OmniMamba, pdl: bool | None = None, **attributes) -> None:
    """Set the decode step's switches (model attributes; `pdl`: fused.USE_PDL) and drop the captured
    graphs, which keep the switches they were captured with."""
    if pdl is not None:
        fused.USE_PDL = pdl
    for name, value in attributes.items():
        assert hasattr(model, name), name
        setattr(model, name, value)
    model._graphs.clear()


@torch.inference_mode()
def agreement(model: OmniMamba, prompt_len: int, steps: int) -> dict:
    """Kernel path vs PyTorch path, first in fp32 (same function?), then in bf16 (the spec's case) with
    the SSM state in bf16 (upstream's, the default) and in fp32."""
    g = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (1, prompt_len), device="cuda", generator=g)
    embeds = model.with_mmu_positions(model.text_embeddings(ids))
    out = {"prompt_tokens": prompt_len, "greedy_steps": steps}
    ref_tokens = greedy(model, embeds, steps, kernels=False)
    ref = forced_logits(model, embeds, ref_tokens, kernels=False)
    out["fp32_kernels_vs_torch"] = compare(forced_logits(model, embeds, ref_tokens, kernels=True), ref)
    out["fp32_same_greedy_tokens"] = greedy(model, embeds, steps, kernels=True) == ref_tokens
    model.to(torch.bfloat16)
    embeds = model.with_mmu_positions(model.text_embeddings(ids))
    for state in ("model", "float32"):
        configure(model, ssm_state_dtype=state)
        out[f"bf16_ssm_state_{state}"] = bf16_agreement(model, embeds, ref, ref_tokens, steps)
    configure(model, ssm_state_dtype="model")
    return out


def bf16_agreement(model: OmniMamba, embeds, ref: torch.Tensor, ref_tokens: list[int], steps: int) -> dict:
    """The bf16 model's kernel and PyTorch paths against each other, against the fp32 PyTorch path's
    logits `ref` (teacher-forced on `ref_tokens`), and the summation-order floor."""
    out = {}
    k = forced_logits(model, embeds, ref_tokens, kernels=True)
    t = forced_logits(model, embeds, ref_tokens, kernels=False)
    out["bf16_kernels_vs_torch"] = compare(k, t)
    out["bf16_kernels_vs_fp32"] = compare(k, ref)
    out["bf16_torch_vs_fp32"] = compare(t, ref)
    # Decode steps alone: both paths continue from one and the same bf16 prefill state.
    model.set_kernels(False)
    start, _ = model.prefill(embeds, "mmu")
    out["bf16_decode_only_kernels_vs_torch"] = compare(
        torch.cat([ref[:1], forced_logits(model, None, ref_tokens, True, start)]),
        torch.cat([ref[:1], forced_logits(model, None, ref_tokens, False, start)]))
    out["bf16_torch_vs_torch_in_proj_summed_in_halves"] = summation_order_floor(model, embeds, ref_tokens)
    gaps_k, gaps_t = [], []
    gk, gt = greedy(model, embeds, steps, True, gaps_k), greedy(model, embeds, steps, False, gaps_t)
    first = divergence(gk, gt)
    out["bf16_top2_logit_gap_median"] = sorted(gaps_t)[len(gaps_t) // 2]
    if first is not None:  # how close to a tie the step was where the two paths chose differently
        out["bf16_top2_logit_gap_at_divergence"] = {"kernels": gaps_k[first], "torch": gaps_t[first]}
    out["bf16_greedy_tokens_kernels"], out["bf16_greedy_tokens_torch"] = gk, gt
    out["bf16_same_greedy_tokens"] = gk == gt
    out["bf16_first_divergence"] = first
    model.set_kernels(True)
    return out


@torch.inference_mode()
def decode_latency(model: OmniMamba, context: int, steps: int = 200) -> dict:
    ids = torch.randint(0, model.config.vocab_size, (1, context), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    state, logits = model.prefill(model.with_mmu_positions(model.text_embeddings(ids)), "mmu")
    torch.cuda.synchronize()
    prefill_s = time.perf_counter() - t0
    token = logits.argmax(-1)
    for _ in range(10):  # capture + warm-up
        token = model.step(state, token).argmax(-1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        token = model.step(state, token).argmax(-1)
    torch.cuda.synchronize()
    return {"context_tokens": context, "prefill_seconds": prefill_s,
            "decode_ms_per_token": 1e3 * (time.perf_counter() - t0) / steps, "decode_steps_timed": steps,
            "peak_memory_bytes": torch.cuda.max_memory_allocated(),
            "step": {"fused_decode": model.use_fused_decode, "fold_conv": model.fold_conv,
                     "pdl": fused.pdl_enabled(state.position.device), "ssm_state": str(state.ssm[0].dtype)}}


# The default step (three kernels a layer, no PDL unless OMNIBENCH_PDL=1, SSM state in the model dtype) is
# DEFAULT_STEP; these are timed beside it at the first context. The previous step: norm+in_proj, conv,
# mamba-ssm's state update, gated norm+out_proj, no PDL, fp32 state.
DEFAULT_STEP = {"use_fused_decode": True, "fold_conv": True, "pdl": fused.USE_PDL, "ssm_state_dtype": "model"}
STEP_VARIANTS = {
    "3 kernels, PDL": {"pdl": True},
    "3 kernels, PDL, fp32 state": {"pdl": True, "ssm_state_dtype": "float32"},
    "3 kernels, no PDL": {"pdl": False},
    "3 kernels, no PDL, fp32 state": {"pdl": False, "ssm_state_dtype": "float32"},
    "4 kernels (previous step), no PDL, fp32 state": {"fold_conv": False, "pdl": False, "ssm_state_dtype": "float32"},
    "4 kernels (previous step), no PDL": {"fold_conv": False, "pdl": False},
}
UNFUSED_STEP = {"use_fused_decode": False, "pdl": False, "ssm_state_dtype": "float32"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--contexts", default="1024,16384,100000")
    ap.add_argument("--gemv-sweep", action="store_true",
                    help="time the fused norm+GEMV kernels over block sizes first and use the fastest")
    ap.add_argument("--unfused-baseline", action="store_true",
                    help="also time decode at the first context with mamba-ssm's separate norm, conv and "
                         "state-update kernels and cuBLAS (fused_decode=false)")
    args = ap.parse_args()
    import mamba_ssm
    import triton

    t_start = time.perf_counter()
    elapsed = {}

    def lap(name: str) -> None:
        elapsed[name] = time.perf_counter() - t_start
        print(json.dumps({"elapsed_seconds": {name: elapsed[name]}}), flush=True)

    model = build(torch.float32)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "triton": triton.__version__, "mamba_ssm": mamba_ssm.__version__, "python": platform.python_version(),
              "dtype": "bfloat16", "batch_size": 1, "weights": "random (seed 0), full OmniMamba-1.3B config",
              "compute_capability": list(torch.cuda.get_device_capability())}
    try:
        import causal_conv1d_cuda  # noqa: F401
        result["causal_conv1d_cuda"] = True
    except ImportError:
        result["causal_conv1d_cuda"] = False
    configure(model, **DEFAULT_STEP)
    result["conv_update_triton_max_abs_err"] = conv_check()
    result["decode_kernels"] = decode_kernel_checks(model.config)
    print(json.dumps(result["decode_kernels"]), flush=True)
    lap("kernel_checks")
    if args.gemv_sweep:
        result["gemv_sweep"] = gemv_sweep()
        lap("gemv_sweep")
    result["fused_configs"] = {f"{n}x{k}": list(c) for (n, k), c in fused.CONFIGS.items()}
    result["state_update_config"] = list(fused.STATE_CONFIG)
    result["agreement"] = agreement(model, prompt_len=600, steps=64)  # leaves the model in bf16
    print(json.dumps({k: v for k, v in result["agreement"].items() if "tokens_" not in k}), flush=True)
    lap("agreement")
    bw = hbm_bandwidth()
    nbytes = decode_bytes(model)
    cfg = model.config
    result["hbm_copy_bandwidth_bytes_per_s"] = bw
    result["decode_weight_bytes"] = nbytes
    result["weight_read_floor_ms"] = 1e3 * nbytes / bw
    # Not in the floor: each step also reads and writes every layer's SSM state.
    result["ssm_state_bytes_read_and_written_per_step"] = {
        name: 2 * cfg.n_layer * cfg.nheads * cfg.headdim * cfg.d_state * size
        for name, size in (("bfloat16", 2), ("float32", 4))}
    configure(model, **DEFAULT_STEP)
    result["latency"] = []
    for ctx in [int(c) for c in args.contexts.split(",")]:
        row = decode_latency(model, ctx)
        row["vs_floor"] = row["decode_ms_per_token"] / result["weight_read_floor_ms"]
        result["latency"].append(row)
        print(json.dumps(row), flush=True)
    lap("latency")
    first_ctx = int(args.contexts.split(",")[0])
    variants = {**STEP_VARIANTS, **({"unfused (fused_decode=false), fp32 state": UNFUSED_STEP}
                                   if args.unfused_baseline else {})}
    result["latency_variants"] = {}
    for name, switches in variants.items():
        configure(model, **{**DEFAULT_STEP, **switches})
        row = decode_latency(model, first_ctx)
        row["vs_floor"] = row["decode_ms_per_token"] / result["weight_read_floor_ms"]
        result["latency_variants"][name] = row
        print(json.dumps({name: row}), flush=True)
    configure(model, **DEFAULT_STEP)
    lap("latency_variants")
    first = result["latency"][0]["decode_ms_per_token"]
    result["longest_vs_shortest"] = result["latency"][-1]["decode_ms_per_token"] / first
    result["elapsed_seconds"] = elapsed
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "omnimamba_gpu.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("agreement", "latency", "decode_kernels")},
                     indent=1))


if __name__ == "__main__":
    main()
