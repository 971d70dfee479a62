"""The Mamba-2 state-space duality (SSD) scan in plain PyTorch, and the switch to mamba-ssm's kernels.

Recurrence per head h (state S of shape headdim x d_state), with dt already passed through
softplus(dt + dt_bias):
    S_t = exp(dt_t * A_h) * S_{t-1} + dt_t * x_t B_t^T
    y_t = S_t C_t + D_h * x_t
`ssd_chunked` evaluates it the way the Triton kernel does (quadratic inside a chunk, recurrent
across chunks); `ssd_step` is one step of it; `ssd_sequential` is the textbook loop, kept for tests.
On CUDA, `kernels()` hands out mamba-ssm's `mamba_chunk_scan_combined` / `selective_state_update`
(imported lazily: mamba-ssm is not installable on CPU-only machines).
"""
from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
import torch.nn.functional as F


def _heads(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """(..., groups, n) -> (..., nheads, n): each group's B or C serves nheads // groups heads."""
    return t.repeat_interleave(nheads // t.shape[-2], dim=-2)


def ssd_chunked(x, dt, A, B, C, D, chunk_size: int, initial_state=None):
    """x (b,l,h,p), dt (b,l,h) post-softplus, A (h), B/C (b,l,g,n), D (h).
    Returns y (b,l,h,p) in fp32 (fp64 for fp64 inputs) and the final state (b,h,p,n) likewise.

    Arithmetic is fp32, and for half-precision inputs the operands of the three matrix products are
    rounded to the input dtype where mamba-ssm's kernels round them for their tensor-core dots: the
    decay- and dt-scaled C.B scores and the dt-scaled B (against x), and the chunk-entering states
    (against C). So in bf16 this path and the kernels differ by summation order, not by where they round."""
    b, l, h, p = x.shape
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    io = x.dtype

    def operand(t: torch.Tensor) -> torch.Tensor:
        return t.to(io).to(work) if io in (torch.bfloat16, torch.float16) else t

    x, dt, A, D = x.to(work), dt.to(work), A.to(work), D.to(work)
    B, C = _heads(B.to(work), h), _heads(C.to(work), h)
    pad = (-l) % chunk_size
    if pad:  # dt = 0 on padding: no decay, no input, the state passes through unchanged
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    nc = x.shape[1] // chunk_size
    x, dt, B, C = (t.reshape(b, nc, chunk_size, *t.shape[2:]) for t in (x, dt, B, C))

    a = torch.cumsum(dt * A, dim=2)  # (b,c,T,h): log-decay from chunk start through step t
    # Within a chunk: y_i = sum_{j<=i} C_i.B_j exp(a_i - a_j) dt_j x_j
    seg = a[:, :, :, None, :] - a[:, :, None, :, :]  # (b,c,i,j,h)
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp(seg.masked_fill(~causal[None, None, :, :, None], float("-inf")))
    scores = operand(torch.einsum("bcihn,bcjhn->bcijh", C, B) * decay * dt[:, :, None])
    y = torch.einsum("bcijh,bcjhp->bcihp", scores, x)
    # Each chunk's own contribution to the state at its end.
    to_end = torch.exp(a[:, :, -1:, :] - a)  # (b,c,T,h)
    chunk_states = torch.einsum("bcjhn,bcjhp->bchpn", operand(B * (to_end * dt)[..., None]), x)
    # Across chunks: a short recurrence over chunk boundaries.
    state = (torch.zeros(b, h, p, B.shape[-1], dtype=work, device=x.device) if initial_state is None
             else initial_state.to(work))
    chunk_decay = torch.exp(a[:, :, -1, :])  # (b,c,h)
    entering = []
    for c in range(nc):
        entering.append(state)
        state = state * chunk_decay[:, c, :, None, None] + chunk_states[:, c]
    entering = operand(torch.stack(entering, dim=1))  # (b,c,h,p,n)
    y = y + torch.einsum("bcihn,bchpn,bcih->bcihp", C, entering, torch.exp(a))
    y = y + x * D[:, None]
    y = y.reshape(b, nc * chunk_size, h, p)[:, :l]
    return y, state


def ssd_step(state, x, dt, A, B, C, D):
    """One recurrence step, updating `state` (b,h,p,n) in place (computed in fp32 whatever the state's
    dtype, as the kernel does). x (b,h,p), dt (b,h), B/C (b,g,n)."""
    h = x.shape[1]
    work = torch.float64 if state.dtype == torch.float64 else torch.float32
    B, C = _heads(B.to(work), h), _heads(C.to(work), h)
    dt = dt.to(work)
    decay = torch.exp(dt * A.to(work))
    new = state.to(work) * decay[..., None, None] + torch.einsum("bh,bhp,bhn->bhpn", dt, x.to(work), B)
    state.copy_(new)
    y = torch.einsum("bhpn,bhn->bhp", new, C) + D.to(work)[:, None] * x.to(work)
    return y.to(x.dtype)


def ssd_sequential(x, dt, A, B, C, D, initial_state=None):
    """The recurrence one token at a time: the reference the chunked form must equal."""
    b, l, h, p = x.shape
    state = (torch.zeros(b, h, p, B.shape[-1], dtype=x.dtype, device=x.device) if initial_state is None
             else initial_state.clone())
    ys = [ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D) for t in range(l)]
    return torch.stack(ys, dim=1), state


@functools.lru_cache(maxsize=None)
def kernels() -> SimpleNamespace:
    """mamba-ssm's Triton kernels (and causal-conv1d's CUDA ones when its extension is built)."""
    from mamba_ssm.ops.triton.layer_norm import layer_norm_fn
    from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    try:
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
    except ImportError:  # the pure-Python wheel without its CUDA extension
        causal_conv1d_fn = causal_conv1d_update = None
    return SimpleNamespace(chunk_scan=mamba_chunk_scan_combined, state_update=selective_state_update,
                           add_rms_norm=layer_norm_fn, gated_rms_norm=rmsnorm_fn,
                           conv1d_fn=causal_conv1d_fn or conv1d_triton,
                           conv1d_update=causal_conv1d_update or conv_update_triton)


# triton_conv.conv_step, the width-4 conv update of one token as a `@triton.jit` helper, once
# `triton_helpers()` has run (triton is imported lazily). conv_update_triton, fused.py's in_proj epilogue
# and the persistent kernel all call it, so the three sum in one order and agree bit for bit. A module
# global, not a closure variable: Triton's interpreter resolves a kernel's names in its module's globals.
conv_step = None


def triton_helpers() -> None:
    global conv_step
    from .triton_conv import conv_step


@functools.lru_cache(maxsize=None)
def _conv_update_kernel():
    import triton
    import triton.language as tl

    triton_helpers()

    @triton.jit
    def conv_update(x_ptr, state_ptr, w_ptr, bias_ptr, out_ptr, channels, stride_x, stride_state, stride_out,
                    BLOCK: tl.constexpr):
        # Width-4 depthwise causal conv, one token (conv_step).
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < channels
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
        w = w_ptr + cols * 4
        acc = conv_step(state_ptr + row * stride_state + cols * 4,
                        tl.load(w, mask=mask, other=0.0).to(tl.float32),
                        tl.load(w + 1, mask=mask, other=0.0).to(tl.float32),
                        tl.load(w + 2, mask=mask, other=0.0).to(tl.float32),
                        tl.load(w + 3, mask=mask, other=0.0).to(tl.float32),
                        tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32), x, mask)
        tl.store(out_ptr + row * stride_out + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)

    return conv_update


def conv_update_triton(x, conv_state, weight, bias, activation="silu"):
    """causal-conv1d's `causal_conv1d_update` (width 4, SiLU) as one Triton kernel, for machines
    where causal-conv1d's CUDA extension is not built. x (b, c) strided rows; state (b, c, 4)."""
    assert activation == "silu" and conv_state.shape[-1] == 4 and conv_state.is_contiguous()
    b, c = x.shape
    out = torch.empty(b, c, device=x.device, dtype=x.dtype)
    block = 256
    _conv_update_kernel()[(b, (c + block - 1) // block)](
        x, conv_state, weight.contiguous(), bias, out, c, x.stride(0), conv_state.stride(0), out.stride(0),
        BLOCK=block)
    return out


@functools.lru_cache(maxsize=None)
def _conv_fwd_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def conv_fwd(x_ptr, w_ptr, bias_ptr, out_ptr, length, channels, sxb, sxc, sxl, sob, soc, sol,
                 K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
        # Depthwise causal conv of a (BLOCK_L x BLOCK_C) tile: bias + sum_k w[k] x[t - K + 1 + k], in
        # fp32 (k in order, as causal-conv1d sums), then SiLU, rounded once to the output dtype.
        b = tl.program_id(0)
        ts = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
        cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cs < channels
        acc = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
        acc += tl.load(bias_ptr + cs, mask=cmask, other=0.0).to(tl.float32)[None, :]
        for k in tl.static_range(K):
            t = ts - (K - 1) + k
            m = ((t >= 0) & (t < length))[:, None] & cmask[None, :]
            xv = tl.load(x_ptr + b * sxb + t[:, None] * sxl + cs[None, :] * sxc, mask=m, other=0.0)
            wv = tl.load(w_ptr + cs * K + k, mask=cmask, other=0.0).to(tl.float32)
            acc += xv.to(tl.float32) * wv[None, :]
        acc = acc * tl.sigmoid(acc)
        omask = (ts < length)[:, None] & cmask[None, :]
        tl.store(out_ptr + b * sob + ts[:, None] * sol + cs[None, :] * soc, acc.to(out_ptr.dtype.element_ty),
                 mask=omask)

    return conv_fwd


def conv1d_triton(x, weight, bias, activation="silu"):
    """causal-conv1d's `causal_conv1d_fn` (SiLU) as one Triton kernel, for machines where causal-conv1d's
    CUDA extension is not built: x (b, c, l) of any strides (a transposed (b, l, c) slice of the input
    projection), weight (c, k). Returns (b, c, l) laid out as (b, l, c), which the caller transposes back."""
    import triton

    assert activation == "silu"
    b, c, length = x.shape
    k = weight.shape[-1]
    out = torch.empty(b, length, c, device=x.device, dtype=x.dtype).transpose(1, 2)
    block_l, block_c = 32, 128
    _conv_fwd_kernel()[(b, triton.cdiv(length, block_l), triton.cdiv(c, block_c))](
        x, weight.contiguous(), bias, out, length, c, x.stride(0), x.stride(1), x.stride(2),
        out.stride(0), out.stride(1), out.stride(2), K=k, BLOCK_L=block_l, BLOCK_C=block_c)
    return out


def use_kernels(device: torch.device) -> bool:
    return device.type == "cuda" and _kernels_importable()


@functools.lru_cache(maxsize=None)
def _kernels_importable() -> bool:
    try:
        kernels()
    except ImportError:  # CUDA without mamba-ssm: the plain-PyTorch path, also on GPU
        return False
    return True
