"""The text-to-image step's projections at 16 and 32 rows: cuBLAS in other layouts, and a Triton GEMM.

At batch 16 a decode step's in_proj (8512 x 2048) and out_proj (2048 x 4096) run on cuBLAS (the fused
GEMVs of models/omnimamba/fused.py stop at 8 rows), at 15.2 and 9.2 us a call on an H200 (call E's
profile: 2.3 and 1.8 TB/s of weights), where reading the weights takes 8.3 and 4.0 us; 40 images/s needs
the whole layer at ~28 us (reports/speed/README.md). This bench times, per call, each call on another of
48 weight matrices (so the weights come from HBM, as in a step), inside a CUDA graph:

- `F.linear(x, w)`: what the step runs now;
- `mm(w, x.T).T`: the same product with the operands swapped (cuBLAS picks other kernels for a wide M);
- `mm(x, wt)`: the weight stored transposed;
- a Triton tensor-core GEMM (one program per BLOCK_N output columns, looping over K), over a few block
  sizes, with split-K and a fixed-order sum of the partial products for the narrow out_proj.

Each variant's output is compared with `F.linear`'s (relative error). Nothing in the model changes here:
a faster form would go into the step with the agreement checks of bench.omnimamba_gpu.

    python -m bench.skinny_gemm --out $OUT
    TRITON_INTERPRET=1 python -m bench.skinny_gemm --out /tmp/x --device cpu   # correctness only, tiny shapes
"""
from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = {"in_proj": (8512, 2048), "out_proj": (2048, 4096), "img_head": (16384, 2048)}  # (N, K)
COUNT = 48  # weight matrices cycled: together larger than the 50 MB L2


@functools.lru_cache(maxsize=None)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def gemm(x_ptr, w_ptr, out_ptr, M, N, K, k_per_split, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_K: tl.constexpr):
        """out[split, m, n] = sum over this split's K range of x[m, k] * w[n, k] (fp32)."""
        pid_n, split = tl.program_id(0), tl.program_id(1)
        rm = tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        k0 = split * k_per_split
        for k in range(k0, k0 + k_per_split, BLOCK_K):
            rk = k + tl.arange(0, BLOCK_K)
            a = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K),
                        other=0.0)
            b = tl.load(w_ptr + rn[None, :] * K + rk[:, None], mask=(rn[None, :] < N) & (rk[:, None] < K),
                        other=0.0)
            acc += tl.dot(a, b)
        tl.store(out_ptr + split * M * N + rm[:, None] * N + rn[None, :], acc,
                 mask=(rm[:, None] < M) & (rn[None, :] < N))

    return gemm


def triton_linear(x: torch.Tensor, w: torch.Tensor, block_n: int, block_k: int, split: int, warps: int,
                  stages: int) -> torch.Tensor:
    """x @ w.T in fp32 partial sums over `split` K ranges, summed in a fixed order, cast to x's dtype."""
    import triton
    m, k = x.shape
    n = w.shape[0]
    assert k % (split * block_k) == 0, "each split covers whole BLOCK_K tiles"
    part = torch.empty(split, m, n, device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(n, block_n), split)
    _kernel()[grid](x, w, part, m, n, k, k // split, BLOCK_M=max(16, triton.next_power_of_2(m)),
                    BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    return (part[0] if split == 1 else part.sum(0)).to(x.dtype)


@torch.inference_mode()
def sweep(device: str, rows_list: tuple[int, ...], shapes: dict, count: int) -> list[dict]:
    from .omnimamba_gpu import graph_ms, rel_err

    cuda = device.startswith("cuda")
    g = torch.Generator(device=device).manual_seed(0)
    dtype = torch.bfloat16 if cuda else torch.float32
    out = []
    for name, (n, k) in shapes.items():
        ws = [torch.randn(n, k, generator=g, device=device, dtype=dtype) * k ** -0.5 for _ in range(count)]
        wts = [w.t().contiguous() for w in ws]
        for m in rows_list:
            x = torch.randn(m, k, generator=g, device=device, dtype=dtype)
            ref = F.linear(x, ws[0])
            variants = {"F.linear(x, w)": lambda w, wt: F.linear(x, w),
                        "mm(w, x.T).T": lambda w, wt: torch.mm(w, x.t()).t(),
                        "mm(x, wt)": lambda w, wt: torch.mm(x, wt)}
            for block_n in (32, 64, 128):
                for block_k in (128, 256):
                    for split in (1, 2, 4):
                        if k % (split * block_k) or n // block_n * split > 4 * 132 or (split > 1 and n > 4096):
                            continue
                        for warps, stages in ((4, 3), (8, 4)):
                            variants[f"triton n{block_n} k{block_k} s{split} w{warps} st{stages}"] = (
                                lambda w, wt, c=(block_n, block_k, split, warps, stages): triton_linear(x, w, *c))
            for label, fn in variants.items():
                row = {"shape": name, "n": n, "k": k, "rows": m, "variant": label}
                try:
                    row["rel_err"] = rel_err(fn(ws[0], wts[0]), ref)
                    if cuda:
                        us = 1e3 * graph_ms(lambda: [fn(w, wt) for w, wt in zip(ws, wts)]) / count
                        row.update(us=round(us, 2), weight_tb_per_s=round(n * k * 2 / us / 1e6, 2))
                except Exception as exc:  # a config that does not compile or run is recorded, not fatal
                    row["error"] = str(exc).splitlines()[0][:200]
                out.append(row)
            here = [r for r in out if r["shape"] == name and r["rows"] == m]
            best = min((r for r in here if "us" in r and r["rel_err"] < 1e-2), key=lambda r: r["us"], default=None)
            print(json.dumps({"shape": name, "rows": m, "F.linear": here[0].get("us"), "best": best}), flush=True)
        del ws, wts
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        rows = sweep(args.device, (16, 32), SHAPES, COUNT)
    else:  # the interpreter: correctness of every variant at small shapes
        rows = sweep(args.device, (16,), {"small": (256, 512)}, 2)
        bad = [r for r in rows if "error" in r or r["rel_err"] > 1e-5]
        assert not bad, bad[:3]
    args.out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    (args.out / "skinny_gemm.json").write_text(
        json.dumps({"gpu": gpu, "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
