"""Decode-step GEMVs with the neighbouring RMSNorm folded in: one Triton kernel, two uses per layer.

At batch 1 a decode step is a chain of matrix-vector products whose weights are read once from HBM;
between them sit normalisations over one row, each its own ~2 us launch. Here each program of the GEMV
normalises the (short) input row itself, so a layer's step is in_proj, conv, state update, out_proj:

- `norm_linear`: residual' = x + residual (fp32); h = rmsnorm(residual') * w rounded to the model
  dtype; out = h @ W^T. The block's pre-norm and its in_proj (with the route's LoRA merged in).
- `gated_norm_linear`: h = rmsnorm(y * silu(z)) * w rounded to the model dtype; out = h @ W^T. The
  mixer's gated norm (norm_before_gate=False, one group) and its out_proj.

Both round h where the separate norm kernels round their output and accumulate in fp32, so they compute
what the unfused ops (mamba-ssm's `layer_norm_fn` / `rmsnorm_fn`, then cuBLAS) compute, to fp32
summation order. The model's own unfused ops are the reference and the path on CPU, for batches larger
than `MAX_ROWS`, and for grouped norms. Block sizes were picked on an H100 with the weights cold in L2
(bench/omnimamba_gpu.py --gemv-sweep, reports/omnimamba_gpu/).
"""
from __future__ import annotations

import functools
import os

import torch

MAX_ROWS = 8  # batch rows one kernel program serves from the weight tile it holds
# (BLOCK_N, num_warps) per (out_features, in_features), the fastest of bench.omnimamba_gpu's sweep on an H100
# (in_proj 13.3 us = 2.62 TB/s, out_proj 8.2 us, text head 66.8 us = 3.08 TB/s; cuBLAS after a separate
# norm kernel: 16.4, 12.1, 79.2 us). Other shapes use DEFAULT_CONFIG.
CONFIGS: dict[tuple[int, int], tuple[int, int]] = {(8512, 2048): (2, 4), (2048, 4096): (4, 8), (50288, 2048): (2, 4)}
DEFAULT_CONFIG = (2, 4)


@functools.lru_cache(maxsize=None)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def norm_gemv(x_ptr, z_ptr, res_ptr, res_out_ptr, nw_ptr, w_ptr, out_ptr, N, K, eps,
                  stride_x, stride_z, stride_res, stride_res_out, stride_out,
                  ROWS: tl.constexpr, GATED: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr):
        # One program: BLOCK_N output features for every batch row, the whole K extent in one tile.
        pid = tl.program_id(0)
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        k = tl.arange(0, BLOCK_K)
        n_ok, k_ok = n < N, k < K
        w = tl.load(w_ptr + n[:, None] * K + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        nw = tl.load(nw_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
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
            acc = tl.sum(w.to(tl.float32) * h[None, :], axis=1)
            tl.store(out_ptr + m * stride_out + n, acc.to(out_ptr.dtype.element_ty), mask=n_ok)

    return norm_gemv


def fused_available(*rows: torch.Tensor | None) -> bool:
    """The kernels take rows on CUDA (or under the Triton interpreter), at most MAX_ROWS of them, each
    row contiguous; a None (no residual yet) is fine."""
    rows = [t for t in rows if t is not None]
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return (all((t.is_cuda or interpreted) and t.dim() == 2 and t.shape[0] <= MAX_ROWS and t.stride(-1) == 1
                for t in rows) and _has_triton())


@functools.lru_cache(maxsize=None)
def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _launch(x, z, residual, norm_weight, eps, weight, gated: bool, config=None):
    import triton

    rows, k = x.shape
    n = weight.shape[0]
    assert weight.is_contiguous() and weight.shape[1] == k, "the kernel reads weight rows of length K"
    block_n, warps = config or CONFIGS.get((n, k), DEFAULT_CONFIG)
    out = torch.empty(rows, n, device=x.device, dtype=x.dtype)
    res_out = None if gated else torch.empty(rows, k, device=x.device, dtype=torch.float32)
    dummy = out
    _kernel()[(triton.cdiv(n, block_n),)](
        x, z if gated else dummy, residual if residual is not None else dummy, res_out if not gated else dummy,
        norm_weight, weight, out, n, k, eps,
        x.stride(0), z.stride(0) if gated else 0, residual.stride(0) if residual is not None else 0,
        0 if gated else res_out.stride(0), out.stride(0),
        ROWS=rows, GATED=gated, HAS_RES=residual is not None, BLOCK_N=block_n,
        BLOCK_K=triton.next_power_of_2(k), num_warps=warps)
    return out, res_out


def norm_linear(x, residual, norm_weight, eps: float, weight, config=None):
    """(rmsnorm(x + residual) * norm_weight, in x's dtype) @ weight^T, and the fp32 residual x + residual."""
    return _launch(x, None, residual, norm_weight, eps, weight, gated=False, config=config)


def gated_norm_linear(y, z, norm_weight, eps: float, weight, config=None):
    """(rmsnorm(y * silu(z)) * norm_weight, in y's dtype) @ weight^T, one norm group over the row."""
    return _launch(y, z, None, norm_weight, eps, weight, gated=True, config=config)[0]
