"""A whole-stack decode step at batch 1: the 48 layers' three fused ops in ONE persistent Triton kernel.

fused.py's step is three kernels a layer (~145 a token). Each is a few microseconds long, too short to
reach the card's bandwidth, and between any two the GPU drains and refills. Here one kernel of at most
one program per SM runs every layer's three phases in order, with a grid-wide barrier between phases:

- phase 0 (in_proj): residual' = x + residual (fp32; program 0 stores it), h = rmsnorm(residual') * w
  rounded to the model dtype, once per program; then the program's share of in_proj's rows, h @ W^T,
  with the conv update (window shift, SiLU) on the xBC features, into a scratch row;
- phase 1 (state update): the program's (head, BLOCK_P rows) tiles of the SSM state, mamba-ssm's
  `selective_state_update` step (dt softplus, one dt per head), y into a scratch row;
- phase 2 (out_proj): h = rmsnorm(y * silu(z)) * w rounded, once per program; then its share of
  out_proj's rows, into the next layer's input row.

Each computes what fused.py's kernels compute, rounding where they round (see there), so the two agree to
fp32 summation order. What the persistent form buys: no launch between phases, and each program loads its
first weight tile of a phase (and its first state tile) before it waits at the barrier, so HBM reads of
the next phase overlap the last one's tail. The barrier is a counter in global memory: each program adds
one (release, GPU scope, after a CTA barrier) and spins until the counter reaches its target (acquire).
Rows written by other programs (x, residual, the in_proj output, y) are loaded with `.cg` (L2, never a
stale L1 line). All programs must be resident at once, so the grid is at most the SM count.

Measured on an H200 it is correct and SLOWER than fused.py's step: 1.92 ms/token against 1.27, and 1.91
launched once a phase without barriers, so the phases themselves are slow (one program an SM keeps too
few weight reads in flight; reports/omnimamba_gpu/). So OmniMamba.persistent_decode is off by default.

`sync=False` launches the same kernel once per phase instead (no barrier, stream order between phases):
the path under Triton's interpreter, whose programs run one after another, and a check on the GPU that
the barrier changes nothing. Batch 1 only; the caller (OmniMamba._step) falls back to fused.py's step
otherwise. The token embedding before and the final norm + head after stay fused.py's / torch's kernels.
"""
from __future__ import annotations

import functools

import torch

from . import ssd
from .fused import _interpreted

# Table columns: per layer, the addresses of its tensors (weights of the route, then its states).
COLUMNS = ("w_in", "norm_w", "conv_w", "conv_b", "A", "D", "dt_bias", "gate_norm_w", "w_out", "conv_state",
           "ssm_state")
# (BLOCK_N in_proj, BLOCK_N out_proj, BLOCK_P, num_warps): the in_proj tile is BLOCK_N x 2048 weights,
# out_proj's BLOCK_N x 4096; BLOCK_P 32 makes 128 state tiles, one per program on a 132-SM card.
CONFIG = (8, 4, 32, 8)
SYNC: bool | None = None  # None: the one-launch kernel with barriers wherever it runs compiled (layers_step)


@functools.lru_cache(maxsize=None)
def _kernel():
    import triton
    import triton.language as tl

    ssd.triton_helpers()

    @triton.jit
    def grid_sync(sync_ptr, target):
        # Every thread's stores of this program before the release; everyone's loads after the acquire.
        tl.debug_barrier()
        seen = tl.atomic_add(sync_ptr, 1, sem="acq_rel", scope="gpu") + 1
        while seen < target:
            seen = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
        tl.debug_barrier()

    @triton.jit
    def decode_stack(table_ptr, x0_ptr, x_ptr, res_ptr, zxbcdt_ptr, y_ptr, sync_ptr, proto_state_ptr,
                     first_phase, last_phase, K, DI, N_IN, NH, P, DS, NG, eps_in, eps_gate,
                     NCOL: tl.constexpr, NPROG: tl.constexpr, SYNC: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_DI: tl.constexpr, BLOCK_S: tl.constexpr,
                     BLOCK_N_IN: tl.constexpr, BLOCK_N_OUT: tl.constexpr, BLOCK_P: tl.constexpr):
        pid = tl.program_id(0)
        mt = x_ptr.dtype.element_ty  # the model dtype: weights, x, the in_proj output, y
        mptr = tl.pointer_type(mt)
        sptr = tl.pointer_type(proto_state_ptr.dtype.element_ty)
        k = tl.arange(0, BLOCK_K)
        k_ok = k < K
        d = tl.arange(0, BLOCK_DI)
        d_ok = d < DI
        conv_dim = DI + 2 * NG * DS
        n_in_blocks = tl.cdiv(N_IN, BLOCK_N_IN)
        n_out_blocks = tl.cdiv(K, BLOCK_N_OUT)
        n_tiles = NH * tl.cdiv(P, BLOCK_P)
        for g in range(first_phase, last_phase):
            layer = g // 3
            kind = g % 3
            row = table_ptr + layer * NCOL
            if kind == 0:
                # -- in_proj (+ pre-norm, + conv update) ------------------------------------------------
                w_ptr = tl.load(row + 0).to(mptr)
                nw = tl.load(tl.load(row + 1).to(mptr) + k, mask=k_ok, other=0.0).to(tl.float32)
                n = pid * BLOCK_N_IN + tl.arange(0, BLOCK_N_IN)
                w = tl.load(w_ptr + n[:, None] * K + k[None, :], mask=(n < N_IN)[:, None] & k_ok[None, :],
                            other=0.0)
                if SYNC:
                    if g > first_phase:
                        grid_sync(sync_ptr, (g - first_phase) * NPROG)
                if layer == 0:
                    x = tl.load(x0_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
                else:
                    x = tl.load(x_ptr + k, mask=k_ok, other=0.0, cache_modifier=".cg").to(tl.float32)
                    x += tl.load(res_ptr + ((layer + 1) % 2) * K + k, mask=k_ok, other=0.0, cache_modifier=".cg")
                tl.store(res_ptr + (layer % 2) * K + k, x, mask=k_ok & ((k * 0 + pid) == 0))
                rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / K + eps_in)
                h = (x * rstd * nw).to(mt).to(tl.float32)
                conv_w_ptr = tl.load(row + 2).to(mptr)
                conv_b_ptr = tl.load(row + 3).to(mptr)
                conv_state_ptr = tl.load(row + 9).to(mptr)
                for nb in range(pid, n_in_blocks, NPROG):
                    n = nb * BLOCK_N_IN + tl.arange(0, BLOCK_N_IN)
                    n_ok = n < N_IN
                    n2 = n + NPROG * BLOCK_N_IN  # the next tile this program takes, loaded before this one is used
                    w_next = tl.load(w_ptr + n2[:, None] * K + k[None, :], mask=(n2 < N_IN)[:, None] & k_ok[None, :],
                                     other=0.0)
                    out = tl.sum(w.to(tl.float32) * h[None, :], axis=1).to(mt)
                    c = n - DI  # xBC features are conv channels
                    c_ok = n_ok & (n >= DI) & (n < DI + conv_dim)
                    cw = conv_w_ptr + c * 4
                    # ssd.conv_step: as fused.py's epilogue
                    acc = ssd.conv_step(conv_state_ptr + c * 4,
                                    tl.load(cw, mask=c_ok, other=0.0).to(tl.float32),
                                    tl.load(cw + 1, mask=c_ok, other=0.0).to(tl.float32),
                                    tl.load(cw + 2, mask=c_ok, other=0.0).to(tl.float32),
                                    tl.load(cw + 3, mask=c_ok, other=0.0).to(tl.float32),
                                    tl.load(conv_b_ptr + c, mask=c_ok, other=0.0).to(tl.float32), out, c_ok)
                    out = tl.where(c_ok, acc.to(mt), out)
                    tl.store(zxbcdt_ptr + n, out, mask=n_ok)
                    w = w_next
            elif kind == 1:
                # -- SSM state update -------------------------------------------------------------------
                state_ptr = tl.load(row + 10).to(sptr)
                A_ptr = tl.load(row + 4).to(tl.pointer_type(tl.float32))
                D_ptr = tl.load(row + 5).to(mptr)
                dt_bias_ptr = tl.load(row + 6).to(mptr)
                s = tl.arange(0, BLOCK_S)
                s_ok = s < DS
                hh = pid // tl.cdiv(P, BLOCK_P)
                p = (pid % tl.cdiv(P, BLOCK_P)) * BLOCK_P + tl.arange(0, BLOCK_P)
                tile = state_ptr + hh * P * DS + p[:, None] * DS + s[None, :]
                p_end = tl.where(pid < n_tiles, P, 0)  # a program past the last tile loads nothing
                tile_ok = (p < p_end)[:, None] & s_ok[None, :]
                state = tl.load(tile, mask=tile_ok, other=0.0).to(tl.float32)
                if SYNC:
                    if g > first_phase:
                        grid_sync(sync_ptr, (g - first_phase) * NPROG)
                for t in range(pid, n_tiles, NPROG):
                    hh = t // tl.cdiv(P, BLOCK_P)
                    p = (t % tl.cdiv(P, BLOCK_P)) * BLOCK_P + tl.arange(0, BLOCK_P)
                    p_ok = p < P
                    tile = state_ptr + hh * P * DS + p[:, None] * DS + s[None, :]
                    tile_ok = p_ok[:, None] & s_ok[None, :]
                    if t != pid:
                        state = tl.load(tile, mask=tile_ok, other=0.0).to(tl.float32)
                    A = tl.load(A_ptr + hh)
                    D = tl.load(D_ptr + hh).to(tl.float32)
                    xs = tl.load(zxbcdt_ptr + DI + hh * P + p, mask=p_ok, other=0.0,
                                 cache_modifier=".cg").to(tl.float32)
                    dt = tl.load(zxbcdt_ptr + DI + conv_dim + hh, cache_modifier=".cg").to(tl.float32) + \
                        tl.load(dt_bias_ptr + hh).to(tl.float32)
                    dt = tl.where(dt <= 20.0, tl.log(tl.exp(dt) + 1.0), dt)
                    grp = hh // (NH // NG)
                    B = tl.load(zxbcdt_ptr + 2 * DI + grp * DS + s, mask=s_ok, other=0.0,
                                cache_modifier=".cg").to(tl.float32)
                    C = tl.load(zxbcdt_ptr + 2 * DI + NG * DS + grp * DS + s, mask=s_ok, other=0.0,
                                cache_modifier=".cg").to(tl.float32)
                    state = state * tl.exp(A * dt) + (B * dt)[None, :] * xs[:, None]
                    tl.store(tile, state.to(proto_state_ptr.dtype.element_ty), mask=tile_ok)
                    yv = tl.sum(state * C[None, :], axis=1) + xs * D
                    tl.store(y_ptr + hh * P + p, yv.to(mt), mask=p_ok)
            else:
                # -- gated norm + out_proj --------------------------------------------------------------
                w_ptr = tl.load(row + 8).to(mptr)
                gnw = tl.load(tl.load(row + 7).to(mptr) + d, mask=d_ok, other=0.0).to(tl.float32)
                n = pid * BLOCK_N_OUT + tl.arange(0, BLOCK_N_OUT)
                w = tl.load(w_ptr + n[:, None] * DI + d[None, :], mask=(n < K)[:, None] & d_ok[None, :], other=0.0)
                if SYNC:
                    if g > first_phase:
                        grid_sync(sync_ptr, (g - first_phase) * NPROG)
                yv = tl.load(y_ptr + d, mask=d_ok, other=0.0, cache_modifier=".cg").to(tl.float32)
                z = tl.load(zxbcdt_ptr + d, mask=d_ok, other=0.0, cache_modifier=".cg").to(tl.float32)
                yv = yv * z * tl.sigmoid(z)
                rstd = 1.0 / tl.sqrt(tl.sum(yv * yv, axis=0) / DI + eps_gate)
                h = (yv * rstd * gnw).to(mt).to(tl.float32)
                for nb in range(pid, n_out_blocks, NPROG):
                    n = nb * BLOCK_N_OUT + tl.arange(0, BLOCK_N_OUT)
                    n2 = n + NPROG * BLOCK_N_OUT
                    w_next = tl.load(w_ptr + n2[:, None] * DI + d[None, :], mask=(n2 < K)[:, None] & d_ok[None, :],
                                     other=0.0)
                    out = tl.sum(w.to(tl.float32) * h[None, :], axis=1)
                    tl.store(x_ptr + n, out.to(mt), mask=n < K)
                    w = w_next

    return decode_stack


@functools.lru_cache(maxsize=None)
def _sm_count(index: int | None) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


class Stack:
    """The scratch rows and address tables of one model's persistent step (OmniMamba.persistent_decode)."""

    def __init__(self) -> None:
        self._tables: dict[tuple, torch.Tensor] = {}
        self._scratch: dict[tuple, dict[str, torch.Tensor]] = {}

    def table(self, layers: list[tuple[torch.Tensor, ...]], device: torch.device) -> torch.Tensor:
        """A (layers, len(COLUMNS)) int64 device tensor of the tensors' addresses, made once per set of
        addresses (so a CUDA-graph step's warm-up makes it and the recording reuses it)."""
        key = tuple(t.data_ptr() for ts in layers for t in ts)
        if key not in self._tables:
            if len(self._tables) > 64:  # states of many past batches: keep the cache bounded
                self._tables.clear()
            self._tables[key] = torch.tensor(key, dtype=torch.int64).view(len(layers), len(COLUMNS)).to(device)
        return self._tables[key]

    def scratch(self, d_model: int, n_in: int, d_inner: int, dtype: torch.dtype, device: torch.device):
        key = (d_model, n_in, d_inner, dtype, device)
        if key not in self._scratch:
            self._scratch[key] = {"x": torch.empty(d_model, dtype=dtype, device=device),
                                  "res": torch.empty(2, d_model, dtype=torch.float32, device=device),
                                  "zxbcdt": torch.empty(n_in, dtype=dtype, device=device),
                                  "y": torch.empty(d_inner, dtype=dtype, device=device),
                                  "sync": torch.zeros(1, dtype=torch.int32, device=device)}
        return self._scratch[key]


def layers_step(stack: Stack, x: torch.Tensor, layers: list[tuple[torch.Tensor, ...]], *, d_inner: int,
                nheads: int, headdim: int, d_state: int, ngroups: int, eps_in: float, eps_gate: float,
                sync: bool | None = None, config=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every layer's decode step for one token: x (1, d_model), the layer-0 input (the token embedding);
    `layers`: per layer the tensors of COLUMNS (merged in_proj of the route, block norm weight, conv weight
    (c, 4) and bias, A (fp32), D, dt_bias, gated-norm weight, out_proj weight, conv state (1, c, 4), SSM
    state (1, h, p, n)); states updated in place. Returns the last layer's mixer output (1, d_model) and
    the fp32 residual (1, d_model), as fused.py's steps leave them for the final norm."""
    import triton

    assert x.dim() == 2 and x.shape[0] == 1 and x.is_contiguous(), "batch 1, one contiguous row"
    d_model = x.shape[1]
    n_in = layers[0][0].shape[0]
    for ts in layers:
        assert all(t.is_contiguous() for t in ts), "the kernel reads every tensor as a dense array"
        assert all(ts[i].dtype == x.dtype for i in (0, 1, 2, 3, 5, 6, 7, 8, 9)) and ts[4].dtype == torch.float32
        assert ts[9].shape == (1, d_inner + 2 * ngroups * d_state, 4) and ts[10].shape == (1, nheads, headdim, d_state)
        assert ts[10].dtype == layers[0][10].dtype
    block_in, block_out, block_p, warps = config or CONFIG
    buf = stack.scratch(d_model, n_in, d_inner, x.dtype, x.device)
    table = stack.table(layers, x.device)
    if sync is None:
        sync = SYNC if SYNC is not None else not _interpreted()
    # Every program resident at once: at most one a multiprocessor. Under the interpreter a few, so that
    # each takes several tiles of every phase.
    nprog = 4 if _interpreted() else min(_sm_count(x.device.index),
                                         max(triton.cdiv(n_in, block_in), nheads * triton.cdiv(headdim, block_p)))
    meta = dict(NCOL=len(COLUMNS), NPROG=nprog, SYNC=sync, BLOCK_K=triton.next_power_of_2(d_model),
                BLOCK_DI=triton.next_power_of_2(d_inner), BLOCK_S=triton.next_power_of_2(d_state),
                BLOCK_N_IN=block_in, BLOCK_N_OUT=block_out, BLOCK_P=block_p, num_warps=warps)
    args = (table, x, buf["x"], buf["res"], buf["zxbcdt"], buf["y"], buf["sync"], layers[0][10])
    dims = (d_model, d_inner, n_in, nheads, headdim, d_state, ngroups, eps_in, eps_gate)
    phases = 3 * len(layers)
    if sync:
        buf["sync"].zero_()
        _kernel()[(nprog,)](*args, 0, phases, *dims, **meta)
    else:
        for g in range(phases):
            _kernel()[(nprog,)](*args, g, g + 1, *dims, **meta)
    res = buf["res"][(len(layers) - 1) % 2]
    return buf["x"].view(1, d_model), res.view(1, d_model)
