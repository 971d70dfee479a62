"""Does prefetching the next layer's weights into L2, beside the decode step, bring it nearer the floor?

A batch-1 decode step takes ~1.27 ms on an H200 against a 0.64 ms weight-read floor: 145 dependent
kernels, each too short to keep HBM busy from its first load to its last (ramp-up, tail, the latency-bound
state update, launch gaps). Here a second stream in the same CUDA graph issues Hopper's bulk L2 prefetch
(`cp.async.bulk.prefetch.L2.global`: one thread asks the copy engine for a whole chunk, no registers, no
SM time) of the weights the next kernels will read, so HBM stays busy in those gaps and the GEMVs then
read (part of) their weights from L2. Nothing is written: the logits must be bit for bit those of the
step without prefetch (checked). Without touching the model package (its source is part of every
OmniMamba point's code version): the step is the model's own `Mamba2Mixer.step` (hook at a layer's
start) or the same three fused.py calls (hook also after in_proj), checked equal to `OmniMamba.step`.

1. GEMVs alone (fused.py's norm GEMV, 48 calls in a graph): weights cold (48 layers' matrices), L2-hot
   (one matrix 48 times), and each call after a bulk prefetch of its own matrix (prefetch then GEMV).
2. Batch-1 step (MMU route, text head): no prefetch vs prefetch variants, ms/token (graph replays).
3. Batch-16 step (T2I route; cuBLAS GEMMs and separate norm / conv kernels): no prefetch vs prefetch of
   the next layer's in_proj at each layer's start.

    python -m bench.l2_prefetch --out $OUT
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from pathlib import Path

import torch

from bench.omnimamba_gpu import build, clone_state, configure, decode_bytes, hbm_bandwidth, replay_ms
from omnibench.models.omnimamba import fused

CHUNK = 16384  # bytes one bulk prefetch asks for


@functools.lru_cache(maxsize=None)
def prefetch_kernel(mode: str):
    import triton
    import triton.language as tl

    if mode == "bulk":
        asm = ("{ .reg .pred p; setp.ne.b32 p, $3, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; "
               "mov.u32 $0, 0; }")
    elif mode == "line":  # one 128-byte line an instruction, kept in L2 before others
        asm = "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p prefetch.global.L2::evict_last [$1]; mov.u32 $0, 0; }"
    else:
        raise ValueError(mode)
    step = CHUNK if mode == "bulk" else 128

    @triton.jit
    def l2_prefetch(ptr, nbytes, STEP: tl.constexpr, BLOCK: tl.constexpr, ASM: tl.constexpr):
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        base = ptr.to(tl.pointer_type(tl.int8))
        n = tl.cdiv(nbytes, STEP)
        for start in range(pid * BLOCK, n, nprog * BLOCK):
            idx = start + tl.arange(0, BLOCK)
            ok = idx < n
            off = idx.to(tl.int64) * STEP
            size = tl.minimum(nbytes - off, STEP).to(tl.int32)
            tl.inline_asm_elementwise(ASM, "=r,l,r,r", [base + off, size, ok.to(tl.int32)], dtype=tl.int32,
                                      is_pure=False, pack=1)

    def launch(t: torch.Tensor, fraction: float, programs: int) -> None:
        nbytes = int(t.numel() * t.element_size() * fraction) // 16 * 16
        if nbytes:
            l2_prefetch[(programs,)](t, nbytes, STEP=step, BLOCK=32, ASM=asm, num_warps=1)

    return launch


def capture(fn) -> torch.cuda.CUDAGraph:
    side = torch.cuda.Stream(priority=-1)  # its few programs get the next free slot, ahead of a GEMV's
    fn(side)  # compile, autotune
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(side)
    return graph


def fork(side: torch.cuda.Stream, launch) -> None:
    """Run `launch` on `side` once everything queued on the current stream so far is done."""
    main = torch.cuda.current_stream()
    side.wait_stream(main)
    with torch.cuda.stream(side):
        launch()


@torch.inference_mode()
def gemv_alone(model, mode: str, programs: int) -> dict:
    layers = model.lm.backbone.layers
    pf = prefetch_kernel(mode)
    x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
    norm_w = layers[0].norm.weight
    mats = {"in_proj": [layer.mixer.in_proj.merged("mmu") for layer in layers],
            "out_proj": [layer.mixer.out_proj.weight for layer in layers]}
    y = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    out = {}
    for name, ws in mats.items():
        def gemv(w):
            if name == "in_proj":
                fused.norm_linear(x, None, norm_w, 1e-5, w)
            else:
                fused.gated_norm_linear(y, y, layers[0].mixer.norm.weight, 1e-5, w)

        def cold(side):
            for w in ws:
                gemv(w)

        def hot(side):
            for _ in ws:
                gemv(ws[0])

        def prefetched(side):
            for w in ws:
                pf(w, 1.0, programs)
                gemv(w)

        def prefetch_only(side):
            for w in ws:
                pf(w, 1.0, programs)

        out[name] = {k: 1e3 * replay_ms(capture(f), 20) / len(ws)
                     for k, f in (("cold_us", cold), ("l2_hot_us", hot), ("prefetch_then_gemv_us", prefetched),
                                  ("prefetch_issue_only_us", prefetch_only))}
        out[name]["bytes"] = ws[0].numel() * ws[0].element_size()
        print(json.dumps({name: out[name]}), flush=True)
    return out


@torch.inference_mode()
def rows_check(model, rows: int) -> dict:
    """fused.py's CUDA-core norm GEMVs at `rows` rows (the model took them up to 8 rows when this ran; at 16,
    text to image, it runs a norm kernel + cuBLAS + the conv kernel, and the gated norm + cuBLAS), each
    call on the next of 48 layers' matrices in a CUDA graph, microseconds a call, and the difference."""
    from omnibench.models.omnimamba.modeling_omnimamba import add_rms_norm, conv_update_triton
    import torch.nn.functional as F

    layers = model.lm.backbone.layers
    cfg = model.config
    torch.manual_seed(2)
    x = torch.randn(rows, cfg.d_model, device="cuda", dtype=torch.bfloat16)
    res = torch.randn(rows, cfg.d_model, device="cuda", dtype=torch.float32)
    y = torch.randn(rows, cfg.d_inner, device="cuda", dtype=torch.bfloat16)
    z = torch.randn(rows, cfg.d_inner, device="cuda", dtype=torch.bfloat16)
    conv_dim = layers[0].mixer.conv_dim
    conv_states = [torch.randn(rows, conv_dim, 4, device="cuda", dtype=torch.bfloat16) for _ in layers]

    def conv_args(i):
        m = layers[i].mixer
        return (conv_states[i], m.conv1d.weight.squeeze(1), m.conv1d.bias, cfg.d_inner)

    def in_fused(side):
        for i, layer in enumerate(layers):
            fused.norm_linear(x, res, layer.norm.weight, layer.norm.eps, layer.mixer.in_proj.merged("t2i"),
                              conv=conv_args(i))

    def in_unfused(side):
        for i, layer in enumerate(layers):
            h, _ = add_rms_norm(x, res, layer.norm, prenorm=True)
            out = F.linear(h, layer.mixer.in_proj.merged("t2i"))
            cs, w, b, lo = conv_args(i)
            conv_update_triton(out[:, lo:lo + conv_dim], cs, w, b, "silu")

    def out_fused(side):
        for layer in layers:
            m = layer.mixer
            fused.gated_norm_linear(y, z, m.norm.weight, m.norm.eps, m.out_proj.weight)

    def out_unfused(side):
        for layer in layers:
            m = layer.mixer
            m.out_proj(m.norm(y, z))

    row = {}
    for name, fn in (("in_proj_fused_us", in_fused), ("in_proj_norm_cublas_conv_us", in_unfused),
                     ("out_proj_fused_us", out_fused), ("out_proj_norm_cublas_us", out_unfused)):
        try:
            row[name] = 1e3 * replay_ms(capture(fn), 20) / len(layers)
        except Exception as e:
            row[name] = f"{type(e).__name__}: {e}"[:300]
    # The same numbers? (fp32 sums in another order; conv states restored first)
    try:
        m, layer = layers[0].mixer, layers[0]
        cs = conv_states[0].clone()
        a, _ = fused.norm_linear(x, res, layer.norm.weight, layer.norm.eps, m.in_proj.merged("t2i"),
                                 conv=(cs, *conv_args(0)[1:]))
        cs2 = conv_states[0].clone()
        h, _ = add_rms_norm(x, res, layer.norm, prenorm=True)
        b = F.linear(h, m.in_proj.merged("t2i"))
        lo = cfg.d_inner
        b[:, lo:lo + conv_dim] = conv_update_triton(b[:, lo:lo + conv_dim].contiguous(), cs2,
                                                    m.conv1d.weight.squeeze(1), m.conv1d.bias, "silu")
        row["in_proj_rel_diff"] = ((a.float() - b.float()).norm() / b.float().norm()).item()
        a = fused.gated_norm_linear(y, z, m.norm.weight, m.norm.eps, m.out_proj.weight)
        b = m.out_proj(m.norm(y, z))
        row["out_proj_rel_diff"] = ((a.float() - b.float()).norm() / b.float().norm()).item()
    except Exception as e:
        row["check_error"] = f"{type(e).__name__}: {e}"[:300]
    print(json.dumps({f"rows {rows}": row}), flush=True)
    return row


def mixer_step_after_in(mixer, norm, x, residual, route, conv_state, ssm_state, after_in):
    """Mamba2Mixer.step's three-kernel path (batch <= fused.MAX_ROWS), with a hook after the in_proj GEMV."""
    w_in = mixer.in_proj.merged(route)
    conv = (conv_state, mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias, mixer.cfg.d_inner)
    zxbcdt, residual = fused.norm_linear(x, residual, norm.weight, norm.eps, w_in, conv=conv)
    after_in()
    z, xbc, dt = mixer._split(zxbcdt)
    xs, B, C = mixer._xbc(xbc)
    y = fused.state_update(ssm_state, xs, dt, mixer.A_fp32(), B, C, mixer.D, mixer.dt_bias).flatten(-2)
    return fused.gated_norm_linear(y, z, mixer.norm.weight, mixer.norm.eps, mixer.out_proj.weight), residual


def make_step(model, state, token, plan: dict | None, logits_out: list):
    """A graphable step: the model's layers with prefetches on a side stream per `plan`:
    {"where": "start" | "after_in", "what": ["next_in", "out"], "fraction": f, "programs": g, "mode": m}."""
    layers = model.lm.backbone.layers
    route = state.route
    pf = prefetch_kernel(plan["mode"]) if plan else None

    def targets(i):
        ts = []
        for what in plan["what"]:
            if what == "next_in" and i + 1 < len(layers):
                ts.append(layers[i + 1].mixer.in_proj.merged(route))
            elif what == "out":
                ts.append(layers[i].mixer.out_proj.weight)
        return ts

    def issue(side, i):
        def launch():
            for t in targets(i):
                pf(t, plan["fraction"], plan["programs"])
        fork(side, launch)

    def step(side):
        x = model.token_embeddings(token, state.position, route).to(model._dtype())
        residual = None
        for i, layer in enumerate(layers):
            if plan and plan["where"] == "start":
                issue(side, i)
            if plan and plan["where"] == "after_in":
                x, residual = mixer_step_after_in(layer.mixer, layer.norm, x, residual, route, state.conv[i],
                                                  state.ssm[i], lambda i=i: issue(side, i))
            else:
                x, residual = layer.mixer.step(x, residual, layer.norm, route, state.conv[i], state.ssm[i])
        if plan:
            torch.cuda.current_stream().wait_stream(side)  # join the side stream before the graph ends
        norm_f, head = model.lm.backbone.norm_f, model.head(route)
        if fused.fused_available(x, residual):
            logits = fused.norm_linear(x, residual, norm_f.weight, norm_f.eps, head.weight)[0]
        else:
            from omnibench.models.omnimamba.modeling_omnimamba import add_rms_norm
            logits = model.logits(add_rms_norm(x, residual, norm_f, prenorm=False)[0], route)
        logits_out[:] = [logits]

    return step


@torch.inference_mode()
def step_variants(model, batch: int, route: str, plans: dict, reps: int) -> dict:
    torch.manual_seed(1)
    base_state = model.new_state(batch, route, 100)
    for t in base_state.ssm + base_state.conv:
        t.normal_(0, 0.5)
    vocab = model.head(route).weight.shape[0]
    token = torch.randint(0, vocab, (batch,), device="cuda")
    rows = {}
    # The model's own step (its CUDA graph), once, from a copy of the state: the reference logits.
    ref = model.step(clone_state(base_state), token).float().clone()
    base_logits = None
    for name, plan in plans.items():
        try:
            logits = []
            st = clone_state(base_state)
            step = make_step(model, st, token, plan, logits)
            # First call eager (compiles), from a fresh copy: the logits of one step from base_state.
            fresh = clone_state(base_state)
            step_fresh = make_step(model, fresh, token, plan, logits)
            step_fresh(torch.cuda.Stream(priority=-1))
            torch.cuda.synchronize()
            first = logits[0].float().clone()
            graph = capture(step)
            ms = replay_ms(graph, reps)
            row = {"ms_per_token": ms, "plan": plan,
                   "max_abs_diff_vs_model_step": (first - ref).abs().max().item()}
            if base_logits is None:
                base_logits = first
            row["max_abs_diff_vs_no_prefetch"] = (first - base_logits).abs().max().item()
            del graph
        except Exception as e:  # a variant that fails to compile or launch is recorded, not fatal
            row = {"error": f"{type(e).__name__}: {e}"[:500], "plan": plan}
        rows[name] = row
        print(json.dumps({f"b{batch} {route} {name}": row}), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    import triton

    t0 = time.perf_counter()
    model = build(torch.bfloat16)
    configure(model, use_fused_decode=True, fold_conv=True, pdl=False, ssm_state_dtype="model")
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "python": platform.python_version(), "dtype": "bfloat16", "chunk_bytes": CHUNK,
              "weights": "random (seed 0), full OmniMamba-1.3B config", "l2_bytes":
              torch.cuda.get_device_properties(0).L2_cache_size}
    bw = hbm_bandwidth()
    result["weight_read_floor_ms"] = 1e3 * decode_bytes(model) / bw
    print(json.dumps(result), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    dump = lambda: (Path(args.out) / "l2_prefetch.json").write_text(json.dumps(result, indent=2))  # noqa: E731
    result["gemv_alone"] = {}
    for mode, programs in (("bulk", 8), ("line", 32)):
        try:
            result["gemv_alone"][f"{mode}, {programs} programs"] = gemv_alone(model, mode, programs)
        except Exception as e:
            result["gemv_alone"][f"{mode}, {programs} programs"] = {"error": f"{type(e).__name__}: {e}"[:500]}
            print(json.dumps({mode: result["gemv_alone"][f"{mode}, {programs} programs"]}), flush=True)
        dump()

    def plan(where, what, fraction, programs=8, mode="bulk"):
        return {"where": where, "what": what, "fraction": fraction, "programs": programs, "mode": mode}

    b1 = {"no prefetch": None,
          "start: next in_proj 50%": plan("start", ["next_in"], 0.5),
          "start: next in_proj 100%": plan("start", ["next_in"], 1.0),
          "after_in: next in_proj 50%": plan("after_in", ["next_in"], 0.5),
          "after_in: next in_proj 100%": plan("after_in", ["next_in"], 1.0),
          "after_in: out_proj + next in_proj 50%": plan("after_in", ["out", "next_in"], 0.5),
          "after_in: out_proj + next in_proj 100%": plan("after_in", ["out", "next_in"], 1.0),
          "after_in: next in_proj 100%, 32 programs": plan("after_in", ["next_in"], 1.0, 32),
          "after_in: next in_proj 100%, 2 programs": plan("after_in", ["next_in"], 1.0, 2),
          "after_in: next in_proj 100%, line, 32 programs": plan("after_in", ["next_in"], 1.0, 32, "line")}
    result["fused_rows"] = {}
    for rows in (8, 16):
        result["fused_rows"][rows] = rows_check(model, rows)
    dump()
    result["batch1_mmu"] = step_variants(model, 1, "mmu", b1, args.reps)
    dump()
    b16 = {"no prefetch": None,
           "start: next in_proj 50%": plan("start", ["next_in"], 0.5),
           "start: next in_proj 100%": plan("start", ["next_in"], 1.0),
           "start: next in_proj 100% + out_proj": plan("start", ["next_in", "out"], 1.0)}
    result["batch16_t2i"] = step_variants(model, 16, "t2i", b16, args.reps // 2)
    result["elapsed_seconds"] = time.perf_counter() - t0
    dump()
    print(json.dumps({"elapsed_seconds": result["elapsed_seconds"]}), flush=True)


if __name__ == "__main__":
    main()
