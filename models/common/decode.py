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
    token = logits.argmax(-1)
    done = torch.zeros_like(token, dtype=torch.bool)
    out = []
    for i in range(max_new_tokens):
        token = torch.where(done, token, logits.argmax(-1))
        out.append(token)
        for stop in stop_ids:  # against Python ints: no stop-id tensor copied to the device (a sync)
            done |= token == stop
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        logits = step(token)
    return torch.stack(out, dim=1) if out else token.new_zeros(token.shape[0], 0)


def clean_up_tokenization(text: str) -> str:
    """transformers 4's `clean_up_tokenization`, which upstream's decode applied and transformers 5 no
    longer does by default: no space before . ? ! , and the English contractions joined."""
    for spaced, joined in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                           (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(spaced, joined)
    return text


def upstream_cleans_up(tokenizer) -> bool:
    """Whether upstream's transformers 4 cleaned up decoded text with this tokenizer: its saved config's
    `clean_up_tokenization_spaces`, True where the config does not say (transformers 4's default)."""
    return bool(getattr(tokenizer, "init_kwargs", {}).get("clean_up_tokenization_spaces", True))


def decode_answers(tokenizer, tokens: torch.Tensor, limits: Sequence[int], stop_ids: Collection[int]) -> list[str]:
    """Each row cut at its own limit and before its first stop id, decoded without special tokens, cleaned
    up as upstream's transformers 4 did (explicitly, whatever this transformers' default), stripped."""
    clean = upstream_cleans_up(tokenizer)
    texts = []
    for row, limit in zip(tokens.tolist(), limits):
        row = row[:limit]
        end = next((j for j, t in enumerate(row) if t in stop_ids), len(row))
        text = tokenizer.decode(row[:end], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        texts.append((clean_up_tokenization(text) if clean else text).strip())
    return texts
