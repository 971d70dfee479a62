"""Greedy text decoding, one loop for every family's understanding path. The family passes the first
logits (B, V) and `step(token (B,)) -> next logits (B, V)`: its own `decode_step` on the state its
`prefill` returned, so that what is evaluated is what the speed sweep times."""
from __future__ import annotations

from typing import Callable, Collection, Sequence

import torch

from omnibench.protocol import Request


def token_limits(requests: Sequence[Request], default: int) -> list[int]:
    return [int(r.gen_kwargs.get("max_new_tokens", default)) for r in requests]


def greedy(logits: torch.Tensor, step: Callable[[torch.Tensor], torch.Tensor], stop_ids: Collection[int],
           max_new_tokens: int) -> torch.Tensor:
    """Argmax tokens (B, T <= max_new_tokens), until every row has emitted one of `stop_ids`. A finished row
    repeats its stop id (and `step` reads that); no step follows the last token."""
    stops = torch.tensor(sorted(stop_ids), device=logits.device)
    token = logits.argmax(-1)
    done = torch.zeros_like(token, dtype=torch.bool)
    out = []
    for i in range(max_new_tokens):
        token = torch.where(done, token, logits.argmax(-1))
        out.append(token)
        done |= torch.isin(token, stops)
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        logits = step(token)
    return torch.stack(out, dim=1) if out else token.new_zeros(token.shape[0], 0)


def decode_answers(tokenizer, tokens: torch.Tensor, limits: Sequence[int], stop_ids: Collection[int]) -> list[str]:
    """Each row cut at its own limit and before its first stop id, decoded without special tokens, stripped."""
    texts = []
    for row, limit in zip(tokens.tolist(), limits):
        row = row[:limit]
        end = next((j for j, t in enumerate(row) if t in stop_ids), len(row))
        texts.append(tokenizer.decode(row[:end], skip_special_tokens=True).strip())
    return texts
