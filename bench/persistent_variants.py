"""Variants of the persistent decode kernel (models/omnimamba/persistent.py), timed beside fused.py's
three-kernel step in one process, without touching the model package (whose source is part of every
OmniMamba point's code version in the speed store):

- `spin=volatile`: the barrier spins on volatile loads of the counter (one acquire atomic after it), not
  on atomic adds of 0, which serialise 132 programs on one L2 address;
- `per_sm` > 1: more programs than multiprocessors (not in the default list: with too many registers they
  cannot all be resident, and the barrier then waits forever);
- `sync=False`: the same kernel launched once per phase (144 launches): the phases without barriers;
  with `per_sm` > 1 it cannot hang (no barrier), so `--set programs` asks whether more programs an SM
  make the phases fast (call K: one an SM, 1.906 ms/token without barriers against 1.265 for fused.py);
- `+pipelined`: the tile loops as `tl.range(..., num_stages=3)`, so Triton's pipeliner keeps several
  weight tiles in flight (asynchronous copies into shared memory) instead of the one-ahead prefetch.

A variant's kernel is persistent.py's source with the one change applied as a text substitution (asserted
to match), compiled as its own module. Each variant's fp32 logits are checked against the three-kernel
step's over 8 teacher-forced steps before it is timed.

    python -m bench.persistent_variants --out $OUT                # the variants of call K
    python -m bench.persistent_variants --out $OUT --set programs # more programs, pipelined loops
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

from bench.omnimamba_gpu import build, configure, decode_bytes, decode_latency, forced_logits, hbm_bandwidth, rel_err
from bench.persistent_decode import recorder
from omnibench.models.omnimamba import persistent

SPIN_ATOMIC = """        while seen < target:
            seen = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
"""
SPIN_VOLATILE = """        while seen < target:
            seen = tl.load(sync_ptr, volatile=True)
        tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
"""


TILE_LOOPS = ("for nb in range(pid, n_in_blocks, NPROG):", "for t in range(pid, n_tiles, NPROG):",
              "for nb in range(pid, n_out_blocks, NPROG):")

VARIANT_SETS = {
    "k": [("atomic", 1, None, (4, 4, 32, 8)), ("atomic", 1, False, (4, 4, 32, 8)),
          ("volatile", 1, None, (4, 4, 32, 8)), ("volatile", 1, None, (4, 4, 32, 16)),
          ("volatile", 1, None, (2, 2, 32, 8)), ("volatile", 1, None, (8, 4, 32, 16)),
          ("volatile", 1, None, (16, 8, 32, 16))],
    # Without barriers only (per_sm > 1 with a barrier can hang), then the pipelined loops.
    "programs": [("atomic", 4, False, (4, 4, 32, 4)), ("atomic+pipelined", 1, None, (4, 4, 32, 8)),
                 ("atomic", 8, False, (4, 4, 32, 4)), ("atomic", 2, False, (4, 4, 32, 8)),
                 ("atomic+pipelined", 4, False, (4, 4, 32, 4)), ("atomic", 4, False, (8, 4, 32, 4)),
                 ("atomic", 4, False, (2, 2, 32, 4)), ("atomic+pipelined", 1, False, (4, 4, 32, 8)),
                 ("volatile+pipelined", 1, None, (8, 4, 32, 8))],
}


def variant_source(spin: str) -> str:
    """persistent.py's source with the changes `spin` names ('atomic' or 'volatile', '+pipelined')."""
    src = Path(persistent.__file__).read_text()
    barrier, *extra = spin.split("+")
    assert barrier in ("atomic", "volatile") and set(extra) <= {"pipelined"}, spin
    if barrier == "volatile":
        assert SPIN_ATOMIC in src, "persistent.py's barrier changed: update this bench"
        src = src.replace(SPIN_ATOMIC, SPIN_VOLATILE)
    if "pipelined" in extra:
        for loop in TILE_LOOPS:
            assert src.count(loop) == 1, f"persistent.py's tile loops changed: update this bench ({loop})"
            src = src.replace(loop, loop.replace("in range(", "in tl.range(").replace("NPROG):", "NPROG, num_stages=3):"))
    return src


def variant_module(spin: str):
    src = variant_source(spin)
    name = f"persistent_{spin.replace('+', '_')}"
    path = Path("/tmp") / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = persistent.__package__  # its relative imports (fused) resolve in the model package
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--set", choices=sorted(VARIANT_SETS), default="k", help="which variants (module docstring)")
    args = ap.parse_args()
    for spin, per_sm, sync, _ in VARIANT_SETS[args.set]:  # before any GPU time is spent
        assert per_sm == 1 or sync is False, "more programs than SMs with a barrier can hang the GPU"
    _, emit = recorder(args.out, f"persistent_variants{'' if args.set == 'k' else '_' + args.set}.json")

    import omnibench.models.omnimamba.modeling_omnimamba as mm
    model = build(torch.float32)
    configure(model, use_fused_decode=True, fold_conv=True, ssm_state_dtype="model", pdl=False)
    ids = torch.randint(0, model.config.vocab_size, (1, 300), device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    tokens = list(range(100, 108))
    with torch.inference_mode():
        model.set_kernels(True)
        start, _ = model.prefill(model.with_mmu_positions(model.text_embeddings(ids)), "mmu")
        configure(model, persistent_decode=False)
        ref = forced_logits(model, None, tokens, True, start)
    model.to(torch.bfloat16)
    emit("weight_read_floor_ms", 1e3 * decode_bytes(model) / hbm_bandwidth())
    configure(model, persistent_decode=False)
    emit("three_kernels", decode_latency(model, args.context)["decode_ms_per_token"])
    variants = VARIANT_SETS[args.set]
    real_sm_count = persistent._sm_count
    for spin, per_sm, sync, config in variants:
        name = f"spin={spin},per_sm={per_sm},sync={sync},config={','.join(map(str, config))}"
        mod = variant_module(spin)
        mod.CONFIG, mod.SYNC = config, sync
        mod._sm_count = lambda index, f=real_sm_count, k=per_sm: k * f(index)
        mm.persistent = mod
        model._stack = mod.Stack()
        try:
            with torch.inference_mode():
                model.to(torch.float32)
                configure(model, persistent_decode=True)
                err = rel_err(forced_logits(model, None, tokens, True, start), ref)
                model.to(torch.bfloat16)
                configure(model, persistent_decode=True)
            row = decode_latency(model, args.context)
            emit(name, {"fp32_logits_vs_three_kernels": err, "ms": row["decode_ms_per_token"]})
        except Exception as e:
            emit(name, {"error": repr(e)[:300]})
        finally:
            mm.persistent = persistent
    model._stack = persistent.Stack()


if __name__ == "__main__":
    main()
