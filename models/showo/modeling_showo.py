"""Show-o (showlab/Show-o, `models/modeling_showo.py` + `models/phi.py`): microsoft/phi-1_5 with per-head
q/k LayerNorm, its vocabulary extended by [PAD], nine task tokens, the MAGVIT-v2 codes and one mask
token, and "omni-attention": causal over text, full among the tokens of an image.

Upstream builds a dense additive (N, 1, L, L) mask and recomputes the whole sequence for every new
token and every denoising step. Here the mask is boolean (True = may attend) and goes to PyTorch SDPA;
with `KVCache` the text prefix is computed once, which is exact because rows of the prefix never see
what comes after it (causal text; image rows only ever sit after the text they attend to).
The backbone is transformers' `PhiForCausalLM` (`qk_layernorm=True`, partial rotary), which upstream's
phi.py copies, so module names are the checkpoint's: `showo.model.layers.0.self_attn.q_layernorm.weight`,
`showo.lm_head.bias`. It runs under the attention implementation `ATTEND` (models/common/static_decode.py):
`Showo.run` passes attention proper in (`attend`), so SDPA under the omni-attention mask, the prefix cache
and the static-KV-cache decoder all run these same modules.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PhiConfig, PhiForCausalLM

from omnibench.models.common.static_decode import ATTEND, Attend

# Added after the Phi tokenizer's own tokens, in this order ([PAD] first, as a pad token).
SPECIAL_TOKENS = ("<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>", "<|lvg|>")


@dataclass
class ShowoConfig:
    """Show-o's config.json fields plus the Phi sizes from its `llm_model_path` config."""

    vocab_size: int = 58498  # = llm_vocab_size + num_new_special_tokens + codebook_size + 1 (mask token)
    llm_vocab_size: int = 50295
    codebook_size: int = 8192  # MAGVIT-v2's 2**13 lookup-free codes
    num_vq_tokens: int = 256  # 16x16 at 256 px (1024 for show-o-512x512)
    num_new_special_tokens: int = 10
    # Phi-1.5 (microsoft/phi-1_5 config.json)
    hidden_size: int = 2048
    num_hidden_layers: int = 24
    num_attention_heads: int = 32  # head_dim 64
    intermediate_size: int = 8192
    partial_rotary_factor: float = 0.5  # rotary on the first half of each head's dimensions
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu_new"  # the tanh approximation of GELU
    max_text_len: int = 128  # dataset.preprocessing.max_seq_length of the demo configs

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def image_offset(self) -> int:
        """Token id of image code 0."""
        return self.llm_vocab_size + self.num_new_special_tokens

    @property
    def mask_token_id(self) -> int:
        return self.vocab_size - 1

    @classmethod
    def from_dicts(cls, showo: dict, phi: dict) -> "ShowoConfig":
        names = {f.name for f in fields(cls)}
        merged = {k: v for k, v in phi.items() if k in names}
        merged.update({k: v for k, v in showo.items() if k in names})
        return cls(**merged)

    def to_dict(self) -> dict:
        return asdict(self)


# --- backbone ---------------------------------------------------------------------------------------
class KVCache:
    """Preallocated per-layer keys/values, (B, heads, max_len, head_dim); `length` positions are filled."""

    def __init__(self, cfg: ShowoConfig, batch: int, max_len: int, device, dtype):
        shape = (batch, cfg.num_attention_heads, max_len, cfg.head_dim)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, commit: bool):
        """Keys/values of the cached positions followed by `k`, `v`. With `commit` the new ones are
        stored (they become part of the prefix); without, they are used for this call only."""
        end = self.length + k.shape[2]
        if commit:
            self.k[layer][:, :, self.length:end] = k
            self.v[layer][:, :, self.length:end] = v
            return self.k[layer][:, :, :end], self.v[layer][:, :, :end]
        return (torch.cat([self.k[layer][:, :, :self.length], k], dim=2),
                torch.cat([self.v[layer][:, :, :self.length], v], dim=2))


class Showo(nn.Module):
    def __init__(self, cfg: ShowoConfig):
        super().__init__()
        self.config = cfg
        self.showo = PhiForCausalLM(PhiConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
            partial_rotary_factor=cfg.partial_rotary_factor, rope_theta=cfg.rope_theta,
            layer_norm_eps=cfg.layer_norm_eps, hidden_act=cfg.hidden_act, qk_layernorm=True,
            tie_word_embeddings=False, attn_implementation=ATTEND))

    def run(self, ids: torch.Tensor, position_ids: torch.Tensor, attend: Attend) -> torch.Tensor:
        """Final-LayerNorm hidden states of `ids` (B, n) at `position_ids` (n,) or (B, n), attention done
        by `attend(layer, q, k, v)`: the one body that `hidden` and the static-cache decoder share."""
        positions = position_ids if position_ids.dim() == 2 else position_ids[None]
        return self.showo.model(input_ids=ids, position_ids=positions, use_cache=False, attend=attend).last_hidden_state

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor | None, position_ids: torch.Tensor,
               cache: KVCache | None = None, commit: bool = True) -> torch.Tensor:
        """Final-LayerNorm hidden states of `ids` (B, n). `mask` (B, 1, n, cached + n) boolean, or None
        for plain causal attention (no padding, no image: the speed sweep's text contexts);
        `position_ids` (n,) or (B, n). With a cache, `ids` follow its `length` cached positions."""
        causal = mask is None and ids.shape[1] > 1  # plain causal attention: SDPA may pick its flash kernel
        if cache is not None and causal and cache.length:
            raise ValueError("a causal block after cached positions needs an explicit mask")

        def attend(layer: int, q, k, v):
            if cache is not None:
                k, v = cache.update(layer, k, v, commit)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)

        out = self.run(ids, position_ids, attend)
        if cache is not None and commit:
            cache.length += ids.shape[1]
        return out

    def logits(self, hidden: torch.Tensor, vocab: slice = slice(None)) -> torch.Tensor:
        """fp32 logits over `vocab` (a slice of the full vocabulary), as upstream's `.float()`."""
        w, b = self.showo.lm_head.weight[vocab], self.showo.lm_head.bias[vocab]
        return F.linear(hidden, w, b).float()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Upstream's `Showo.forward` at inference: all positions, full vocabulary, no cache."""
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.logits(self.hidden(ids, mask, pos))


# --- omni-attention masks ------------------------------------------------------------------------------
def t2i_attention_mask(ids: torch.Tensor, pad_id: int, soi_id: int, eoi_id: int) -> torch.Tensor:
    """Upstream `create_attention_mask_predict_next(..., rm_pad_in_image=True)` as a boolean (N, 1, L, L).

    Text rows are causal and, after the left padding, do not see the pads; rows from <|soi|> to <|eoi|>
    see every non-pad position of the sequence (text, all image tokens, <|eoi|>). Pad rows are causal
    among the pads (their outputs are never read)."""
    n, length = ids.shape
    is_pad = ids == pad_id
    starts, ends = (ids == soi_id).cumsum(1), (ids == eoi_id).cumsum(1)
    in_image = (starts > ends) | (ids == soi_id) | (ids == eoi_id)
    causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
    pos = torch.arange(length, device=ids.device)
    # Last pad index per row (-1 if none): rows after it do not see columns up to it.
    last_pad = torch.where(is_pad, pos, torch.full_like(pos, -1)).max(1).values
    after_pad = pos[None, :, None] > last_pad[:, None, None]
    col_le_pad = pos[None, None, :] <= last_pad[:, None, None]
    text = causal[None] & ~(after_pad & col_le_pad)
    image = ~is_pad[:, None, :].expand(n, length, length)
    mask = torch.where(in_image[:, :, None], image, text)
    return mask[:, None]


def mmu_attention_mask(ids: torch.Tensor, pad_id: int, eoi_id: int) -> torch.Tensor:
    """Upstream `create_attention_mask_for_mmu` for a left-padded batch, boolean (N, 1, L, L): causal,
    plus every row sees all positions up to and including the (first) <|eoi|>; no row sees a pad and a
    pad row sees only itself (so no row is empty). Without an <|eoi|> it is plain causal."""
    n, length = ids.shape
    pos = torch.arange(length, device=ids.device)
    is_eoi = ids == eoi_id
    eoi_at = torch.where(is_eoi.any(1), is_eoi.float().argmax(1), torch.full((n,), -1, device=ids.device))
    see = (pos[None, None, :] <= pos[None, :, None]) | (pos[None, None, :] <= eoi_at[:, None, None])
    not_pad = ids != pad_id
    mask = (see & not_pad[:, None, :] & not_pad[:, :, None]) | torch.eye(length, dtype=torch.bool, device=ids.device)
    return mask[:, None]


# --- text-to-image: MaskGIT-style discrete diffusion ------------------------------------------------
def cosine_schedule(t: torch.Tensor) -> torch.Tensor:
    return torch.cos(t * math.pi * 0.5)


def _gumbel(shape, generators, device) -> torch.Tensor:
    u = torch.stack([torch.zeros(shape[1:], device=device).uniform_(0, 1, generator=g) for g in generators])
    return -torch.log((-torch.log(u.clamp(min=1e-20))).clamp(min=1e-20))


def t2i_sample(logits_fn: Callable[[torch.Tensor], torch.Tensor], image_ids: torch.Tensor, steps: int,
               mask_token_id: int, generators: list[torch.Generator], temperature: float = 1.0,
               schedule: Callable[[torch.Tensor], torch.Tensor] = cosine_schedule) -> torch.Tensor:
    """Upstream `Showo.t2i_generate`. `image_ids` (B, N): code ids in [0, codebook) or `mask_token_id`.
    `logits_fn(image_ids)` gives guided logits (B, N, codebook) for the current tokens. One generator
    per row, so a row's result does not depend on what else is in the batch. Returns the codes
    sampled at the last step (B, N)."""
    ids = image_ids.clone()
    n = ids.shape[1]
    for step in range(steps):
        probs = logits_fn(ids).softmax(dim=-1)
        sampled = torch.stack([torch.multinomial(p, 1, generator=g)[:, 0] for p, g in zip(probs, generators)])
        unknown = ids == mask_token_id
        sampled = torch.where(unknown, sampled, ids)
        ratio = 1.0 * (step + 1) / steps
        mask_ratio = schedule(torch.tensor(ratio))
        selected = torch.gather(probs, -1, sampled[..., None]).squeeze(-1)
        selected = torch.where(unknown, selected, torch.finfo(selected.dtype).max)
        mask_len = (n * mask_ratio).floor().unsqueeze(0).to(probs.device)
        # At least one token stays masked for the next round and at least one is revealed now.
        mask_len = torch.max(torch.tensor([1], device=probs.device),
                             torch.min(unknown.sum(dim=-1, keepdim=True) - 1, mask_len))
        temperature = temperature * (1.0 - ratio)  # compounds over steps, as upstream
        confidence = torch.log(selected.clamp(min=1e-20)) + temperature * _gumbel(selected.shape, generators,
                                                                                 probs.device)
        cut_off = torch.gather(torch.sort(confidence, dim=-1).values, 1, mask_len.long())
        masking = confidence < cut_off
        ids = torch.where(masking, mask_token_id, sampled)
    return sampled
