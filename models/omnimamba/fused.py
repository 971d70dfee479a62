"""Decode-step kernels: a Mamba-2 layer's batch-1 step in three Triton kernels, overlapped by PDL.

At batch 1 a decode step is a chain of matrix-vector products whose weights are read once from HBM;
between them sit small ops (norms over one row, the conv update), each its own ~2 us launch. Here they
ride inside the GEMVs, so a layer's step is in_proj (+ norm, + conv), state update, out_proj (+ norm):

- `norm_linear`: residual' = x + residual (fp32); h = rmsnorm(residual') * w rounded to the model
  dtype; out = h @ W^T. The block's pre-norm and its in_proj (with the route's LoRA merged in), and the
  final norm and the head. With `conv=` (the in_proj), the xBC features of the output then go through
  the width-4 causal conv update of their channel (window shifted, SiLU) before they are stored.
- `state_update`: one SSM recurrence step (mamba-ssm's `selective_state_update` with dt_softplus, for
  Mamba-2's one-dt-per-head layout), on x, B, C and the raw dt as strided views of the in_proj output.
- `gated_norm_linear`: h = rmsnorm(y * silu(z)) * w rounded to the model dtype; out = h @ W^T. The
  mixer's gated norm (norm_before_gate=False, one group) and its out_proj.

Each rounds where the separate ops round (h to the model dtype, the raw xBC to the model dtype before the
conv, the conv output, the new state to the state's dtype) and computes in fp32, so they compute what
the unfused ops (mamba-ssm's `layer_norm_fn` / `rmsnorm_fn`, cuBLAS, `conv_update_triton`,
`selective_state_update`) compute, to fp32 summation order; the conv epilogue is bit for bit
`conv_update_triton`. The model's own unfused ops are the reference and the path on CPU, for batches
larger than `MAX_ROWS` (1; the state update takes any batch), and for grouped norms. Block sizes were
picked on an H100 with the weights cold in L2 (bench/omnimamba_gpu.py --gemv-sweep, reports/omnimamba_gpu/).

Programmatic Dependent Launch (PDL, compute capability >= 9): each kernel is launched so that it may
start while the kernel before it is still running. A program first loads what no kernel of the step
writes, then lets the next kernel launch (`gdc_launch_dependents`, once every program of this one has
got there), waits for the previous kernel (`gdc_wait`: it and all its memory operations are complete),
then loads its inputs, computes and stores. So a kernel's early loads may run beside any earlier kernel
of the step that has not finished yet. Why they are safe:
- Weights (GEMV rows, norm weights, conv weight and bias, A, D, dt_bias) are written by no kernel.
- A layer's SSM state is read and written only by that layer's state-update kernel. The same kernel of
  the previous step is finished: every step begins with ordinary (non-PDL) torch launches (the token
  embedding), which start only once everything before them in the stream is complete; so do the
  prefill and the copies that bind a state to a CUDA graph. Within a step no other kernel touches it.
- Everything else (the input rows, the residual, the conv window, in_proj's output) is loaded after
  `gdc_wait`. Past it, the previous kernel is complete, and so, transitively (it passed its own
  `gdc_wait` before completing), is every kernel before it; all writes also come after `gdc_wait`, so
  no kernel writes memory (a pool buffer reused, say) that an earlier one may still read.
`USE_PDL` (default off; `OMNIBENCH_PDL=1` turns it on) is read at every launch, so a CUDA graph keeps
what it was captured with; under Triton's interpreter and below compute capability 9 it is off. Off by
default because it did not pay on an H200 (reports/omnimamba_gpu/: the batch-1 CUDA-graph step took
1.308 ms/token with PDL and 1.271 without, same run, 1k context).
"""
from __future__ import annotations

import functools
import os

import torch

from . import ssd

# Batch rows the model sends to the GEMV kernels (`fused_available`). The kernels take up to KERNEL_ROWS (one
# program serves every row from the weight tile it holds), but past one row they lose to a norm kernel +
# cuBLAS (+ the conv kernel): on an H200, in_proj at 8 rows 118.6 us against 17.2, out_proj 33.8 against
# 11.0 (reports/omnimamba_gpu/, call N: every program re-normalises every row). So only batch 1 takes them.
MAX_ROWS = 1
KERNEL_ROWS = 8
# (BLOCK_N, num_warps) per (out_features, in_features), the fastest of bench.omnimamba_gpu's sweep on an H100
# (in_proj 13.3 us = 2.62 TB/s, out_proj 8.2 us, text head 66.8 us = 3.08 TB/s; cuBLAS after a separate
# norm kernel: 16.4, 12.1, 79.2 us). Other shapes use DEFAULT_CONFIG.
CONFIGS: dict[tuple[int, int], tuple[int, int]] = {(8512, 2048): (2, 4), (2048, 4096): (4, 8), (50288, 2048): (2, 4)}
DEFAULT_CONFIG = (2, 4)
# (BLOCK_P, num_warps) of the state update: headdim 64 x d_state 128 gives 4 x 64 programs per batch row,
# few enough that all of them are resident at once and issue their state loads before gdc_wait.
STATE_CONFIG = (16, 4)
USE_PDL = os.environ.get("OMNIBENCH_PDL", "0") == "1"


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def pdl_enabled(device: torch.device) -> bool:
    """Whether the kernels launch with PDL on this device now (see the module docstring)."""
    return USE_PDL and device.type == "cuda" and not _interpreted() and _capability(device.index)[0] >= 9


@functools.lru_cache(maxsize=None)
def _capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


@functools.lru_cache(maxsize=None)
def _gemv_kernel():
    import triton
    import triton.language as tl

    ssd.triton_helpers()

    @triton.jit
    def norm_gemv(x_ptr, z_ptr, res_ptr, res_out_ptr, nw_ptr, w_ptr, out_ptr, conv_state_ptr, conv_w_ptr,
                  conv_b_ptr, N, K, eps, conv_lo, conv_hi,
                  stride_x, stride_z, stride_res, stride_res_out, stride_out, stride_conv_state,
                  ROWS: tl.constexpr, GATED: tl.constexpr, HAS_RES: tl.constexpr, CONV: tl.constexpr,
                  USE_PDL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # One program: BLOCK_N output features for every batch row, the whole K extent in one tile.
        pid = tl.program_id(0)
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        k = tl.arange(0, BLOCK_K)
        n_ok, k_ok = n < N, k < K
        # Before gdc_wait: weights only (module docstring).
        w = tl.load(w_ptr + n[:, None] * K + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        nw = tl.load(nw_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
        if CONV:  # features [conv_lo, conv_hi) are conv channels n - conv_lo; BLOCK_N divides both bounds
            c = n - conv_lo
            c_ok = n_ok & (n >= conv_lo) & (n < conv_hi)
            cw = conv_w_ptr + c * 4
            cw0 = tl.load(cw, mask=c_ok, other=0.0).to(tl.float32)
            cw1 = tl.load(cw + 1, mask=c_ok, other=0.0).to(tl.float32)
            cw2 = tl.load(cw + 2, mask=c_ok, other=0.0).to(tl.float32)
            cw3 = tl.load(cw + 3, mask=c_ok, other=0.0).to(tl.float32)
            cb = tl.load(conv_b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        if USE_PDL:
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        for m in tl.static_range(ROWS):
            x = tl.load(x_ptr + m * stride_x + k, mask=k_ok, other=0.0).to(tl.float32)
            if GATED:
                z = tl.load(z_ptr + m * stride_z + k, mask=k_ok, other=0.0).to(tl.float32)
                x = x * z * tl.sigmoid(z)
            else:
                if HAS_RES:
                    x += tl.load(res_ptr + m * stride_res + k, mask=k_ok, other=0.0)
                # Program 0 writes the new residual (a predicate, not a branch: the branch cost ~5%).
                tl.store(res_out_ptr + m * stride_res_out + k, x, mask=k_ok & ((k * 0 + pid) == 0))
            rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / K + eps)
            h = (x * rstd * nw).to(w_ptr.dtype.element_ty).to(tl.float32)
            out = tl.sum(w.to(tl.float32) * h[None, :], axis=1).to(out_ptr.dtype.element_ty)
            if CONV:
                # ssd.conv_step: the conv update conv_update_triton makes (they agree bit for bit)
                acc = ssd.conv_step(conv_state_ptr + m * stride_conv_state + c * 4, cw0, cw1, cw2, cw3, cb, out, c_ok)
                out = tl.where(c_ok, acc.to(out_ptr.dtype.element_ty), out)
            tl.store(out_ptr + m * stride_out + n, out, mask=n_ok)

    return norm_gemv


@functools.lru_cache(maxsize=None)
def _state_update_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def state_update(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dt_bias_ptr, y_ptr,
                     P, N, heads_per_group,
                     stride_state_b, stride_state_h, stride_state_p, stride_x_b, stride_x_h, stride_dt_b,
                     stride_dt_h, stride_B_b, stride_B_g, stride_C_b, stride_C_g, stride_y_b, stride_y_h,
                     USE_PDL: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
        # One program: BLOCK_P rows of one head's (headdim x d_state) state, for one batch row.
        b = tl.program_id(0)
        h = tl.program_id(1)
        p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
        s = tl.arange(0, BLOCK_N)
        p_ok, s_ok = p < P, s < N
        tile = state_ptr + b * stride_state_b + h * stride_state_h + p[:, None] * stride_state_p + s[None, :]
        tile_ok = p_ok[:, None] & s_ok[None, :]
        # Before gdc_wait: this layer's own state and the weights (module docstring).
        state = tl.load(tile, mask=tile_ok, other=0.0).to(tl.float32)
        A = tl.load(A_ptr + h).to(tl.float32)
        D = tl.load(D_ptr + h).to(tl.float32)
        dt_bias = tl.load(dt_bias_ptr + h).to(tl.float32)
        if USE_PDL:
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        x = tl.load(x_ptr + b * stride_x_b + h * stride_x_h + p, mask=p_ok, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + b * stride_dt_b + h * stride_dt_h).to(tl.float32) + dt_bias
        dt = tl.where(dt <= 20.0, tl.log(tl.exp(dt) + 1.0), dt)  # mamba-ssm's softplus (its Triton 3 form)
        g = h // heads_per_group
        B = tl.load(B_ptr + b * stride_B_b + g * stride_B_g + s, mask=s_ok, other=0.0).to(tl.float32)
        C = tl.load(C_ptr + b * stride_C_b + g * stride_C_g + s, mask=s_ok, other=0.0).to(tl.float32)
        # mamba-ssm's order: state * exp(A dt) + (B dt) x; y from the fp32 state, before it is rounded.
        state = state * tl.exp(A * dt) + (B * dt)[None, :] * x[:, None]
        tl.store(tile, state.to(state_ptr.dtype.element_ty), mask=tile_ok)
        y = tl.sum(state * C[None, :], axis=1) + x * D
        tl.store(y_ptr + b * stride_y_b + h * stride_y_h + p, y.to(y_ptr.dtype.element_ty), mask=p_ok)

    return state_update


def kernels_run_on(device: torch.device) -> bool:
    """Triton kernels run on CUDA, or anywhere under Triton's interpreter."""
    return (device.type == "cuda" or _interpreted()) and _has_triton()


def fused_available(*rows: torch.Tensor | None) -> bool:
    """The model sends rows to the GEMV kernels where `kernels_run_on`, at most MAX_ROWS of them, each row
    contiguous; a None (no residual yet) is fine."""
    rows = [t for t in rows if t is not None]
    return all(kernels_run_on(t.device) and t.dim() == 2 and t.shape[0] <= MAX_ROWS and t.stride(-1) == 1
               for t in rows)


@functools.lru_cache(maxsize=None)
def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _launch(x, z, residual, norm_weight, eps, weight, gated: bool, config=None, conv=None):
    import triton

    rows, k = x.shape
    n = weight.shape[0]
    assert weight.is_contiguous() and weight.shape[1] == k, "the kernel reads weight rows of length K"
    block_n, warps = config or CONFIGS.get((n, k), DEFAULT_CONFIG)
    out = torch.empty(rows, n, device=x.device, dtype=x.dtype)
    res_out = None if gated else torch.empty(rows, k, device=x.device, dtype=torch.float32)
    dummy = out
    conv_state, conv_weight, conv_bias, conv_lo = conv if conv is not None else (dummy, dummy, dummy, 0)
    conv_hi = conv_lo + (conv_state.shape[1] if conv is not None else 0)
    if conv is not None:
        assert conv_lo % block_n == 0 and conv_hi % block_n == 0, "a program's features are all conv or none"
        assert conv_state.shape == (rows, conv_hi - conv_lo, 4) and conv_state.is_contiguous()
        assert conv_weight.shape == (conv_hi - conv_lo, 4) and conv_weight.is_contiguous()
    pdl = pdl_enabled(x.device)
    _gemv_kernel()[(triton.cdiv(n, block_n),)](
        x, z if gated else dummy, residual if residual is not None else dummy, res_out if not gated else dummy,
        norm_weight, weight, out, conv_state, conv_weight, conv_bias, n, k, eps, conv_lo, conv_hi,
        x.stride(0), z.stride(0) if gated else 0, residual.stride(0) if residual is not None else 0,
        0 if gated else res_out.stride(0), out.stride(0), conv_state.stride(0) if conv is not None else 0,
        ROWS=rows, GATED=gated, HAS_RES=residual is not None, CONV=conv is not None, USE_PDL=pdl,
        BLOCK_N=block_n, BLOCK_K=triton.next_power_of_2(k), num_warps=warps, launch_pdl=pdl)
    return out, res_out


def norm_linear(x, residual, norm_weight, eps: float, weight, config=None, conv=None):
    """(rmsnorm(x + residual) * norm_weight, in x's dtype) @ weight^T, and the fp32 residual x + residual.
    `conv`: (conv_state (b, c, 4), conv weight (c, 4), conv bias (c), first feature): the output features
    [first, first + c) are replaced by the causal conv update (SiLU) of their channel, which shifts the
    window in conv_state as causal-conv1d's `causal_conv1d_update` does."""
    return _launch(x, None, residual, norm_weight, eps, weight, gated=False, config=config, conv=conv)


def gated_norm_linear(y, z, norm_weight, eps: float, weight, config=None):
    """(rmsnorm(y * silu(z)) * norm_weight, in y's dtype) @ weight^T, one norm group over the row."""
    return _launch(y, z, None, norm_weight, eps, weight, gated=True, config=config)[0]


def state_update(state, x, dt, A, B, C, D, dt_bias, config=None):
    """mamba-ssm's `selective_state_update(state, x, dt, A, B, C, D, dt_bias=dt_bias, dt_softplus=True)`
    with one dt, A, D, dt_bias per head: state (b, h, p, n) in place, in its own dtype; x (b, h, p), dt
    (b, h) before softplus, B/C (b, g, n), any row strides; A (h) fp32, D and dt_bias (h). Computes in fp32;
    returns y (b, h, p) in x's dtype. Any batch size."""
    import triton

    b, h, p, n = state.shape
    assert state.stride(-1) == 1 and x.stride(-1) == 1 and B.stride(-1) == 1 and C.stride(-1) == 1
    assert x.shape == (b, h, p) and dt.shape == (b, h) and B.shape == C.shape and B.shape[-1] == n
    block_p, warps = config or STATE_CONFIG
    y = torch.empty(b, h, p, device=x.device, dtype=x.dtype)
    pdl = pdl_enabled(x.device)
    _state_update_kernel()[(b, h, triton.cdiv(p, block_p))](
        state, x, dt, A, B, C, D, dt_bias, y, p, n, h // B.shape[1],
        state.stride(0), state.stride(1), state.stride(2), x.stride(0), x.stride(1), dt.stride(0), dt.stride(1),
        B.stride(0), B.stride(1), C.stride(0), C.stride(1), y.stride(0), y.stride(1),
        USE_PDL=pdl, BLOCK_P=block_p, BLOCK_N=triton.next_power_of_2(n), num_warps=warps, launch_pdl=pdl)
    return y
