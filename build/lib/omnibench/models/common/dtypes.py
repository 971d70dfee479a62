"""One dtype policy: the names `--dtype` / `dtype=` accept, and what `auto` means (each family states its own)."""
from __future__ import annotations

from typing import Callable

import torch

from omnibench.protocol import OmnibenchError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def bfloat16_on_cuda(device: str) -> torch.dtype:
    """bfloat16 on CUDA (how the published half-precision models run), float32 elsewhere."""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def resolve_dtype(dtype: str, device: str, model: str,
                  auto: torch.dtype | Callable[[str], torch.dtype] = torch.float32) -> torch.dtype:
    """The torch dtype for `dtype` on `device`; `auto` is the family's own (a dtype, or one per device)."""
    if dtype == "auto":
        return auto(device) if callable(auto) else auto
    if dtype not in DTYPES:
        raise OmnibenchError(f"unknown dtype '{dtype}' for model {model} (known: auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]
