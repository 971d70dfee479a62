"""Seconds-long GPU check of OmniMamba's decode kernels, compiled (not interpreted) on this machine.

    python -m bench.kernel_check            # exit 0: every kernel ran and agreed; 1 otherwise
    TRITON_INTERPRET=1 python -m bench.kernel_check --device cpu   # the same through Triton's interpreter

A tiny random-weight OmniMamba in fp32 on CUDA, prompt of 7 tokens, 3 teacher-forced steps on each route:
fused.py's three-kernel step (batch 2) and persistent.py's whole-stack step (batch 1) against the
plain-PyTorch step, logits and every layer's conv window and SSM state; relative error must stay under
1e-4 (the CPU tests, through Triton's interpreter, see < 1e-5), and the kernels must really have run (their
launches are counted). Run it before a sweep that a kernel change would spoil: a kernel that fails to
compile on the GPU otherwise costs the sweep's OmniMamba points.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from omnibench.models.omnimamba import fused, persistent
from omnibench.models.omnimamba.checkpoint import tiny_config
from omnibench.models.omnimamba.modeling_omnimamba import DecodeState, OmniMamba

LIMIT = 1e-4


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def counted(module, name: str, calls: list) -> None:
    real = getattr(module, name)

    def wrapper(*args, **kw):
        calls.append(name)
        return real(*args, **kw)

    setattr(module, name, wrapper)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    device = torch.device(ap.parse_args().device)
    calls: list[str] = []
    counted(fused, "norm_linear", calls)
    counted(persistent, "layers_step", calls)
    torch.manual_seed(0)
    model = OmniMamba(tiny_config()).to(device).eval()
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)}
    ok = True
    for path, batch, flags in (("fused", 2, dict(use_fused_decode=True, persistent_decode=False)),
                               ("persistent", 1, dict(use_fused_decode=True, persistent_decode=True))):
        for route in ("mmu", "t2i"):
            g = torch.Generator().manual_seed(batch)
            ids = torch.randint(0, 60, (batch, 7), generator=g).to(device)
            embeds = (model.with_mmu_positions(model.text_embeddings(ids)) if route == "mmu"
                      else model.caption_embeddings(ids))
            with torch.no_grad():
                start, _ = model.prefill(embeds, route)
                out = {}
                for name, kernels, f in ((path, True, flags), ("torch", False, dict(use_fused_decode=False,
                                                                                     persistent_decode=False))):
                    model.set_kernels(kernels)
                    for k, v in f.items():
                        setattr(model, k, v)
                    state = DecodeState([t.clone() for t in start.conv], [t.clone() for t in start.ssm],
                                        start.position.clone(), route)
                    calls.clear()
                    logits = torch.stack([model.step(state, ids[:, t]) for t in range(3)])
                    out[name] = (logits, state, list(calls))
            (lk, sk, ck), (lt, st, _) = out[path], out["torch"]
            worst = max(rel(lk, lt), *(rel(a, b) for a, b in zip(sk.conv + sk.ssm, st.conv + st.ssm)))
            ran = ("layers_step" if path == "persistent" else "norm_linear") in ck
            results[f"{path}_{route}"] = {"rel_err": worst, "kernel_launched": ran}
            ok &= ran and worst < LIMIT
    results["ok"] = bool(ok)
    print(json.dumps(results))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
