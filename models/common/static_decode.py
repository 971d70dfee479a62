"""Static KV cache and CUDA-graph decoding for the attention backbones (Show-o's Phi, JanusFlow's Llama).

The backbone supplies one function, `forward(ids, positions, attend) -> logits`, that runs its own modules
(embedding, norms, projections, rotary, MLP, head) and leaves attention to `attend(layer, q, k, v)`: a
transformers model does so when its forward runs under the attention implementation `ATTEND` (registered
here with transformers' `AttentionInterface`) and is given `attend=` as a keyword argument. A prompt
that carries more than token ids (image embeddings in place of placeholders) is prefilled from its input
embeddings: `forward(ids, positions, attend, embeds)` then reads `embeds` instead of embedding `ids`; decode
steps always embed their token. This module supplies the two `attend`s and everything around them:

- prefill: keys/values of the prompt go into K/V buffers preallocated for the prompt plus a decode budget;
  attention is plain SDPA over the prompt (`is_causal`, flash kernel on GPU) or under the prompt's mask.
- decode step: pure tensor ops on static tensors. The new token's slot is made visible in an additive mask
  (-inf past the current length) with `index_fill_` at a position held in a device tensor, each layer
  `index_copy_`s its new key/value into the buffers at that position, and the single query attends over
  the whole buffer under the mask; then the positions advance, on the device.

On CUDA the step is captured once per prefill in a CUDA graph (models/common/graphs.py: warm-up on a
side stream first, as mamba-ssm's `utils/generation.py` does, and the model's shared memory pool) and replayed for each token; on CPU the same step runs eagerly,
so CPU tests check the math the graph replays. A capture that fails (other than for memory) leaves the
decoder eager, with a warning and the reason in `graph_error`. When the buffers are full they grow
(copied, the graph recaptured). The batch shares one cache position: rows are left-padded, and the
mask hides the pads.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from omnibench.models.common.graphs import capture
from transformers import AttentionInterface

DECODE_BUDGET = 512  # decode steps a prefill makes room for before the buffers grow
ALIGN = 64  # capacity granularity: keeps mask rows aligned for the fused SDPA kernels

# attend(layer, q, k, v) -> attention output (B, heads, n, head_dim); q, k, v (B, heads, n, head_dim) after rotary
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# forward(ids (B, n), positions (B, n), attend[, embeds (B, n, D)]) -> fp32 logits of the last position (B, V)
Forward = Callable[..., torch.Tensor]
ATTEND = "omnibench_attend"


def _attend_attention(module, query, key, value, attention_mask, attend: Attend, **kwargs):
    """transformers' attention-function signature, output (B, n, heads, head_dim) as its own functions return.
    The mask is the caller's (transformers builds none for an implementation it has no mask function for);
    the softmax scale is SDPA's default, head_dim ** -0.5, as Phi's and Llama's `scaling`."""
    return attend(module.layer_idx, query, key, value).transpose(1, 2), None


AttentionInterface.register(ATTEND, _attend_attention)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, n, n) prefill mask for left-padded rows (`valid` (B, n), False at pads): causal, no
    row sees a pad, and a pad row sees itself (so that no row is empty and no NaN reaches the cache)."""
    n = valid.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(n, dtype=torch.bool, device=valid.device)
    return ((causal[None] & valid[:, None, :]) | eye[None])[:, None]


def speed_context_ids(length: int, tokenizer, low: int = 100, high: int = 1000) -> torch.Tensor:
    """The speed sweep's kind of context -- (1, length) ids drawn from [low, high) with the length as seed,
    `high` capped at the tokenizer's size -- with every special or added token of `tokenizer` replaced by an
    ordinary one: a byte-level tokenizer keeps its pad, image and task tokens in that range, and a pad or
    image token would change the path."""
    high = min(high, len(tokenizer))
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    ordinary = next(i for i in range(low, high) if i not in special)
    ids = torch.randint(low, high, (1, length), generator=torch.Generator().manual_seed(length))
    return ids.masked_fill(torch.isin(ids, torch.tensor(sorted(special), dtype=torch.long)), ordinary)


class StaticDecoder:
    """One prefill and the decode steps after it, over preallocated K/V buffers (B, kv_heads, capacity,
    head_dim) per layer. `use_graph` (default: on CUDA) captures the step in a CUDA graph on the first
    `step` after a prefill (so graph capture is not counted as prefill time) and replays it after."""

    def __init__(self, forward: Forward, layers: int, kv_heads: int, head_dim: int, device, dtype: torch.dtype,
                 budget: int = DECODE_BUDGET, use_graph: bool | None = None, pool=None) -> None:
        self.forward = forward
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.device, self.dtype = torch.device(device), dtype
        self.budget = max(int(budget), 1)
        self.use_graph = self.device.type == "cuda" if use_graph is None else use_graph
        self.pool = pool  # the model's GraphPool (models/common/graphs.py), shared by its decoders; None: own
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.length = 0  # host mirror of `position`: slots filled so far
        self.graph = None
        self._graph_out: torch.Tensor | None = None
        self.graph_error: str | None = None  # why capture failed, when it did (then the step runs eagerly)
        self.logits: torch.Tensor | None = None  # the last position's logits (B, V)

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2] if self.k else 0

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Reads `ids` (B, n) at rotary `positions` (B, n). `valid` (B, n) is False at left padding (those
        keys stay hidden from every decode step); `mask` (B, 1, n, n) boolean is the prefill's attention
        mask, None for plain causal attention; `embeds` (B, n, D), when given, are the input embeddings
        that `forward` reads instead of embedding `ids`. Returns the last position's logits (B, V)."""
        b, n = ids.shape
        self.graph = self._graph_out = None
        self.k, self.v = [], []  # free the old buffers before allocating the new ones
        cap = round_up(n + self.budget, ALIGN)
        shape = (b, self.kv_heads, cap, self.head_dim)
        # Zeros, not empty: a masked slot gets weight 0, and 0 * NaN from stale memory would still be NaN.
        self.k = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.layers)]
        self.v = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.layers)]

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.k[layer][:, :, :n] = k
            self.v[layer][:, :, :n] = v
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and n > 1)

        self.logits = (self.forward(ids, positions, attend) if embeds is None
                       else self.forward(ids, positions, attend, embeds))
        self.mask = torch.full((b, 1, 1, cap), float("-inf"), device=self.device, dtype=self.dtype)
        if valid is None:
            self.mask[..., :n] = 0.0
        else:
            self.mask[:, 0, 0, :n] = torch.zeros(b, n, device=self.device, dtype=self.dtype).masked_fill_(
                ~valid.to(self.device, torch.bool), float("-inf"))
        self.position = torch.full((1,), n, dtype=torch.long, device=self.device)  # the next slot
        self.positions = positions[:, -1].to(self.device, torch.long) + 1  # each row's next rotary position
        self.token = torch.zeros(b, dtype=torch.long, device=self.device)
        self.length = n
        return self.logits

    def _attend_step(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kb, vb = self.k[layer], self.v[layer]
        kb.index_copy_(2, self.position, k)
        vb.index_copy_(2, self.position, v)
        return F.scaled_dot_product_attention(q, kb, vb, attn_mask=self.mask)

    def _step(self) -> torch.Tensor:
        """The decode step: reads `token`, `position`, `positions`, the mask and buffers; writes them."""
        self.mask.index_fill_(-1, self.position, 0.0)  # the new token's slot becomes visible
        logits = self.forward(self.token[:, None], self.positions[:, None], self._attend_step)
        self.position.add_(1)
        self.positions.add_(1)
        return logits

    def _step_and_rewind(self) -> None:
        """A warm-up step that leaves no trace: its slot is hidden again and the positions rewound (the
        key/value it wrote sits in a masked slot that the next real step overwrites)."""
        position, positions = self.position.clone(), self.positions.clone()
        self._step()
        self.mask.index_fill_(-1, position, float("-inf"))
        self.position.copy_(position)
        self.positions.copy_(positions)

    def _capture(self) -> None:
        # The warm-up steps rewind themselves; the recording runs nothing, so nothing to rewind.
        if self.pool is None:
            self.graph, self._graph_out = capture(self._step, self._step_and_rewind, self.device)
        else:
            self.graph, self._graph_out = self.pool.capture(self._step, self._step_and_rewind, self.device)

    def _grow(self) -> None:
        """Room for more decode steps: larger buffers with the old contents; the graph is recaptured."""
        old = self.capacity
        cap = round_up(old + max(self.budget, old // 4), ALIGN)
        self.graph = self._graph_out = None  # its kernels read the old buffers
        for buffers in (self.k, self.v):
            for i, t in enumerate(buffers):
                new = t.new_zeros(*t.shape[:2], cap, t.shape[3])
                new[:, :, :old] = t
                buffers[i] = new  # one layer at a time: the old buffer is freed before the next is made
        mask = torch.full((*self.mask.shape[:3], cap), float("-inf"), device=self.device, dtype=self.dtype)
        mask[..., :old] = self.mask
        self.mask = mask

    @torch.inference_mode()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Appends `token` (B,) at the next position; returns the next logits (B, V) (a fresh tensor)."""
        if not self.k:
            raise RuntimeError("decode step before prefill")
        if self.length >= self.capacity:
            self._grow()
        self.token.copy_(token.reshape(-1))
        if self.use_graph and self.graph is None:
            try:
                self._capture()
            except torch.cuda.OutOfMemoryError:
                raise
            except RuntimeError as exc:  # a step that cannot be captured still decodes, eagerly, and says so
                self.use_graph, self.graph_error = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                warnings.warn(f"CUDA graph capture failed, decoding eagerly: {self.graph_error}")
        if self.use_graph:
            self.graph.replay()
            out = self._graph_out
        else:
            out = self._step()
        self.length += 1
        self.logits = out.clone()
        return self.logits
