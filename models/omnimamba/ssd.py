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
    Returns y (b,l,h,p) in x's dtype and the final state (b,h,p,n) in float32 (or float64)."""
    b, l, h, p = x.shape
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, dt, A, D = x.to(work), dt.to(work), A.to(work), D.to(work)
    B, C = _heads(B.to(work), h), _heads(C.to(work), h)
    pad = (-l) % chunk_size
    if pad:  # dt = 0 on padding: no decay, no input, the state passes through unchanged
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    nc = x.shape[1] // chunk_size
    x, dt, B, C = (t.reshape(b, nc, chunk_size, *t.shape[2:]) for t in (x, dt, B, C))

    a = torch.cumsum(dt * A, dim=2)  # (b,c,T,h): log-decay from chunk start through step t
    xdt = x * dt[..., None]
    # Within a chunk: y_i = sum_{j<=i} C_i.B_j exp(a_i - a_j) dt_j x_j
    seg = a[:, :, :, None, :] - a[:, :, None, :, :]  # (b,c,i,j,h)
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp(seg.masked_fill(~causal[None, None, :, :, None], float("-inf")))
    scores = torch.einsum("bcihn,bcjhn->bcijh", C, B) * decay
    y = torch.einsum("bcijh,bcjhp->bcihp", scores, xdt)
    # Each chunk's own contribution to the state at its end.
    to_end = torch.exp(a[:, :, -1:, :] - a)  # (b,c,T,h)
    chunk_states = torch.einsum("bcjhn,bcjh,bcjhp->bchpn", B, to_end, xdt)
    # Across chunks: a short recurrence over chunk boundaries.
    state = (torch.zeros(b, h, p, B.shape[-1], dtype=work, device=x.device) if initial_state is None
             else initial_state.to(work))
    chunk_decay = torch.exp(a[:, :, -1, :])  # (b,c,h)
    entering = []
    for c in range(nc):
        entering.append(state)
        state = state * chunk_decay[:, c, :, None, None] + chunk_states[:, c]
    entering = torch.stack(entering, dim=1)  # (b,c,h,p,n)
    y = y + torch.einsum("bcihn,bchpn,bcih->bcihp", C, entering, torch.exp(a))
    y = y + x * D[:, None]
    y = y.reshape(b, nc * chunk_size, h, p)[:, :l]
    return y, state


def ssd_step(state, x, dt, A, B, C, D):
    """One recurrence step, updating `state` (b,h,p,n) in place. x (b,h,p), dt (b,h), B/C (b,g,n)."""
    h = x.shape[1]
    work = state.dtype
    B, C = _heads(B.to(work), h), _heads(C.to(work), h)
    dt = dt.to(work)
    decay = torch.exp(dt * A.to(work))
    state.mul_(decay[..., None, None]).add_(torch.einsum("bh,bhp,bhn->bhpn", dt, x.to(work), B))
    y = torch.einsum("bhpn,bhn->bhp", state, C) + D.to(work)[:, None] * x.to(work)
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
                           conv1d_fn=causal_conv1d_fn, conv1d_update=causal_conv1d_update)


def use_kernels(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        kernels()
    except ImportError:
        return False
    return True
