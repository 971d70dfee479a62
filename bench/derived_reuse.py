"""Does a dtype round trip on the GPU give OmniMamba's `derived` cache (merged in_proj per route) a stale
hit? With the fix (`DerivedCache._apply` drops the cache) and without it (the cache kept, as before
3c3dd7f), count the layers whose merged in_proj after fp32 -> bf16 -> fp32 differs from the merge of
the weights the model now has.

    python -m bench.derived_reuse [--preset tiny|full]
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn as nn

from omnibench.models.omnimamba import modeling_omnimamba as mm
from omnibench.models.omnimamba.checkpoint import random_full, tiny_config


def stale_layers(model: mm.OmniMamba) -> int:
    stale = 0
    for layer in model.lm.backbone.layers:
        lin = layer.mixer.in_proj
        got = lin.merged("mmu")
        a, b = lin.mmu_lora_A0.weight, lin.mmu_lora_B0.weight
        fresh = (lin.weight.float() + lin.scaling * (b.float() @ a.float())).to(lin.weight.dtype)
        stale += int(not torch.equal(got, fresh))
    return stale


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    args = ap.parse_args()
    out = {}
    fixed_apply = mm.DerivedCache._apply
    for fix in (True, False):
        mm.DerivedCache._apply = fixed_apply if fix else nn.Module._apply
        torch.manual_seed(0)
        model = (mm.OmniMamba(tiny_config()).cuda() if args.preset == "tiny" else random_full("cuda", torch.float32))
        counts = []
        with torch.inference_mode():
            stale_layers(model)  # fills the cache from the fp32 weights
            for _ in range(3):
                model.to(torch.bfloat16)
                stale_layers(model)
                model.to(torch.float32)
                counts.append(stale_layers(model))
        out["with the fix" if fix else "without the fix"] = {"layers": len(model.lm.backbone.layers),
                                                            "stale_after_each_round_trip": counts}
        del model
        torch.cuda.empty_cache()
    mm.DerivedCache._apply = fixed_apply
    print(json.dumps({"device": torch.cuda.get_device_name(), "preset": args.preset, **out}))


if __name__ == "__main__":
    main()
