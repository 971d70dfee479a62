"""A stand-in for the FID Inception network, to time feature extraction on a machine that has no weights
file and no internet: NVIDIA's TorchScript network (the same graph, parameter names and shapes, so the
same speed) with random weights, marked as a stand-in so that `fid.load_inception` refuses it unless the
caller asks for one (the speed sweep does; an FID never does).

    python -m bench.inception_stand_in zero SRC DST.gz           # here: the real file, every value zeroed
    python -m bench.inception_stand_in fill SRC.gz DST [--seed N]  # there: full size, random weights

`zero` keeps the architecture and drops the weights, so the gzip is ~100 KB and travels with the working
tree; `fill` writes a full-size file with seeded weights at sane scales (He-normal convolutions, small
biases and means, variances in [0.5, 1.5]), so the activations through the 94 layers stay ordinary floats
(no denormals, no overflow) and the speed is that of real weights.
"""
from __future__ import annotations

import argparse
import gzip
import io
import math
from pathlib import Path

import torch

from omnibench.tasks.fid import STAND_IN_FILE

NOTE = "stand-in: NVIDIA's Inception graph with {what}; for timing only, never for an FID\n"


def _save(module: torch.jit.ScriptModule, what: str) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(module, buf, _extra_files={STAND_IN_FILE: NOTE.format(what=what)})
    return buf.getvalue()


def _tensors(module: torch.jit.ScriptModule) -> list[tuple[str, torch.Tensor]]:
    return list(module.named_parameters()) + list(module.named_buffers())


def zero(src: Path, dst: Path) -> None:
    """`src`'s TorchScript with every parameter and buffer zeroed and the stand-in mark, gzipped to `dst`."""
    module = torch.jit.load(str(src), map_location="cpu")
    with torch.no_grad():
        for _, t in _tensors(module):
            t.zero_()
    blob = _save(module, "every weight zeroed (fill it before use)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(gzip.compress(blob, compresslevel=9, mtime=0))  # mtime 0: the same file from the same source


def _fill_value(name: str, t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Seeded random values for one tensor, by its role: convolution/linear weights He-normal, variances
    (BatchNorm's `var` / `running_var`) in [0.5, 1.5], 1-D scales near 1, everything else (biases, `beta`,
    means) small."""
    leaf = name.rsplit(".", 1)[-1]
    if t.dim() >= 2:
        fan_in = t[0].numel()
        return torch.randn(t.shape, generator=gen) * math.sqrt(2.0 / fan_in)
    if leaf in ("var", "running_var"):
        return 0.5 + torch.rand(t.shape, generator=gen)
    if leaf in ("weight", "gamma"):
        return 1.0 + 0.01 * torch.randn(t.shape, generator=gen)
    return 0.01 * torch.randn(t.shape, generator=gen)


def fill(src: Path, dst: Path, seed: int = 0) -> None:
    """The stand-in `src` (a `zero` gzip) as a full-size TorchScript file at `dst` with seeded random
    weights, still marked as a stand-in."""
    extra = {STAND_IN_FILE: ""}
    module = torch.jit.load(io.BytesIO(gzip.decompress(src.read_bytes())), map_location="cpu", _extra_files=extra)
    if not extra[STAND_IN_FILE]:
        raise SystemExit(f"{src} has no {STAND_IN_FILE}: not a stand-in made by `zero`")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in _tensors(module):
            if t.is_floating_point():
                t.copy_(_fill_value(name, t, gen))
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(_save(module, f"random weights (seed {seed})"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.inception_stand_in", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    z = sub.add_parser("zero", help="the real TorchScript file -> a small gzip of its graph, weights zeroed")
    z.add_argument("src", type=Path)
    z.add_argument("dst", type=Path)
    f = sub.add_parser("fill", help="a zeroed gzip -> a full-size TorchScript file with seeded random weights")
    f.add_argument("src", type=Path)
    f.add_argument("dst", type=Path)
    f.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.command == "zero":
        zero(args.src, args.dst)
    else:
        fill(args.src, args.dst, args.seed)
    print(f"wrote {args.dst} ({args.dst.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
