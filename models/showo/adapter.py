"""`--model showo`: Show-o (discrete MAGVIT-v2 tokens) behind omnibench's ModelAdapter contract.

model_args:
- `pretrained=<folder | hub id>` (default showlab/show-o; showlab/show-o-512x512 for 512 px),
  `vq_model=` (default showlab/magvitv2), `llm=` (default the checkpoint's llm_model_path,
  microsoft/phi-1_5: Phi sizes and tokenizer); or `preset=tiny` (random weights, 16 px, for tests); or
  `preset=full` (the full-size architecture with random weights and a byte-level tokenizer, built on the
  device: for speed and memory measurement only, its outputs are noise).
- `mode=best` (default): text decoding over a static KV cache, in a CUDA graph on GPU
  (models/common/static_decode.py) -- `prefill`/`decode_step`, the speed sweep's, which understanding
  decodes through too; the text prefix of text-to-image computed once, logits only where they are read.
  `mode=as_published`: upstream's cost model, every new token and every denoising step recomputes the
  whole sequence and the full-vocabulary fp32 logits. Both give the same outputs up to floating-point
  rounding.
- text-to-image: `guidance_scale`, `generation_timesteps` (default: the checkpoint's published
  setting, `T2I_DEFAULTS`), `temperature` (default 1.0); cosine mask schedule.

dtype `auto` is float32, as every upstream inference script runs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image

from omnibench.args import Arg
from omnibench.protocol import ModelAdapter, Prepared, Request, SpeedProtocol, random_weights_warning

from omnibench.models.common.decode import decode_answers, greedy, token_limits
from omnibench.models.common.presets import PRESET_ARG, mode_arg
from omnibench.models.common.dtypes import resolve_dtype
from omnibench.models.common.graphs import GraphPool
from omnibench.models.common.static_decode import DECODE_BUDGET, StaticDecoder, speed_context_ids

from .checkpoint import DEFAULT_MAGVIT, DEFAULT_SHOWO, from_pretrained, random_full, tiny_checkpoint
from .magvit import image_transform, to_pil
from .modeling_showo import KVCache, Showo, mmu_attention_mask, t2i_attention_mask, t2i_sample

# Text-to-image settings each checkpoint was published with, by its image-token grid: the 512 px model's
# README T2I command (guidance_scale=5 generation_timesteps=50); the 256 px model's README demos (its only
# published mask-prediction settings: inpainting and extrapolation, guidance_scale=1.75 generation_timesteps=16).
T2I_DEFAULTS = {1024: {"guidance_scale": 5.0, "generation_timesteps": 50},
                256: {"guidance_scale": 1.75, "generation_timesteps": 16}}


def mmu_question(question: str) -> str:
    """Upstream inference_mmu.py's text after <|sot|> for the discrete-token checkpoints."""
    return "USER: \n" + question + " ASSISTANT:"


@dataclass
class DecodeState:
    """mode=as_published text decoding state: every token so far, `ids` (B, L) left-padded, from which
    each step recomputes; `logits` (B, V) are the last position's."""

    ids: torch.Tensor
    logits: torch.Tensor


def t2i_settings(num_vq_tokens: int, guidance_scale: float | None, timesteps: int | None) -> tuple[float, int]:
    """The given T2I settings, each unset one from the checkpoint's published setting (by its token grid;
    a grid no checkpoint was published with, e.g. the tiny preset's, takes the 512 px model's)."""
    published = T2I_DEFAULTS.get(num_vq_tokens, T2I_DEFAULTS[1024])
    return (published["guidance_scale"] if guidance_scale is None else guidance_scale,
            published["generation_timesteps"] if timesteps is None else timesteps)


def prepare_requests(requests: Sequence[Request], tokenizer, resolution: int) -> list[Prepared]:
    """Host side of understanding: the first image transformed to pixels, the question tokenized.
    Picklable with its arguments bound, for worker processes."""
    return [Prepared(r, [image_transform(r.images[0], resolution)] if r.images else [],
                     tokenizer(mmu_question(r.prompt), add_special_tokens=False)["input_ids"]) for r in requests]


class ShowoAdapter(ModelAdapter, SpeedProtocol):
    """Show-o for understanding (`generate_text`, greedy) and text-to-image (`generate_images`).

    For the speed sweep:
    - `prefill(input_ids, max_new_tokens=0)`: reads a (B, L) batch of token ids (text, or an MMU prompt
      with image tokens: rows then see everything up to <|eoi|>) and returns a state whose `logits` are
      the last position's (B, V): mode=best a `StaticDecoder` (static KV cache sized for
      `max_new_tokens`, default 512, grown past it; CUDA graph on GPU), as_published a `DecodeState`.
      `generate_text` decodes through the same two calls.
    - `decode_step(state, token)`: appends one token per row (B,) and returns the next logits (B, V).
      mode=best reads one position against the KV cache; mode=as_published recomputes the whole
      sequence with its dense mask, as upstream's `mmu_generate` does.
    - `speed_context(length)`: (1, length) ordinary text token ids (no pad, image or task token).
    """

    name = "showo"
    ARGS = (
        Arg("pretrained", str, DEFAULT_SHOWO, "Show-o checkpoint: a folder or hub id (default: the 512 px model "
            "of the paper's Table 1; showlab/show-o for 256 px)"),
        Arg("vq_model", str, DEFAULT_MAGVIT, "MAGVIT-v2 tokenizer: a folder or hub id"),
        Arg("llm", str, None, "Phi config and tokenizer (default: the checkpoint's llm_model_path)"),
        PRESET_ARG,
        mode_arg("KV cache, static-cache CUDA-graph decode", "upstream's full recomputation"),
        Arg("guidance_scale", float, None, "text-to-image classifier-free guidance (default: the checkpoint's "
            "published setting, see T2I_DEFAULTS)"),
        Arg("generation_timesteps", int, None, "text-to-image mask-prediction steps (default: the checkpoint's "
            "published setting)"),
        Arg("temperature", float, 1.0, "text-to-image sampling temperature"),
    )

    def __init__(self, device: str = "cpu", dtype: str = "auto", **model_args: Any) -> None:
        super().__init__(device, dtype, **model_args)
        dtype = resolve_dtype(dtype, device, self.name, auto=torch.float32)  # as every upstream inference script
        args = self.args
        preset, self.mode = args["preset"], args["mode"]
        self.guidance_scale, self.timesteps = args["guidance_scale"], args["generation_timesteps"]  # set below
        self.temperature = args["temperature"]
        if preset == "full":
            model, vq, self.tokenizer = random_full(device, dtype)
        else:
            if preset == "tiny":
                root = tiny_checkpoint()
                sources = (str(root / "show-o"), str(root / "magvitv2"), None)
            else:
                sources = (args["pretrained"], args["vq_model"], args["llm"])
            model, vq, self.tokenizer = from_pretrained(*sources)
        self.model: Showo = model.to(device=device, dtype=dtype)
        self.vq = vq.to(device=device, dtype=dtype)
        cfg = self.model.config
        self.cfg = cfg
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id
        self.bos_id, self.eos_id = tok.bos_token_id, tok.eos_token_id
        self.sp = {t: tok.convert_tokens_to_ids(t) for t in ("<|soi|>", "<|eoi|>", "<|t2i|>", "<|mmu|>")}
        self.resolution = int(round(cfg.num_vq_tokens ** 0.5)) * vq.config.downsample
        self.graph_pool = GraphPool()  # shared by the decode graphs of every prefill
        self.guidance_scale, self.timesteps = t2i_settings(cfg.num_vq_tokens, self.guidance_scale, self.timesteps)

    @property
    def _device(self) -> torch.device:
        return self.model.showo.lm_head.weight.device

    def _left_pad(self, rows: list[list[int]]) -> torch.Tensor:
        width = max(len(r) for r in rows)
        return torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows], device=self._device)

    # -- understanding --
    def preprocessor(self):
        return functools.partial(prepare_requests, tokenizer=self.tokenizer, resolution=self.resolution)

    def prepare_text(self, requests: Sequence[Request]) -> list[Prepared]:
        return self.preprocessor()(requests)

    def mmu_ids(self, items: Sequence[Prepared]) -> torch.Tensor:
        """[<|mmu|>, <|soi|>, image tokens, <|eoi|>, <|sot|>] + tok("USER: \\n{q} ASSISTANT:"), left-padded.
        Show-o reads one image: the first; a request without one gets no image segment."""
        with_image = [i for i, p in enumerate(items) if p.pixels]
        codes = {}
        if with_image:
            pixels = torch.stack([items[i].pixels[0] for i in with_image])
            for i, c in zip(with_image, self.vq.get_code(pixels.to(self._device)).tolist()):
                codes[i] = c
        rows = []
        for i, p in enumerate(items):
            image = ([self.sp["<|soi|>"]] + [c + self.cfg.image_offset for c in codes[i]] + [self.sp["<|eoi|>"]]
                     if i in codes else [])
            rows.append([self.sp["<|mmu|>"]] + image + [self.bos_id] + p.ids)
        return self._left_pad(rows)

    def _positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Real tokens numbered from 0 after the left padding, as each prompt alone would be."""
        return ((ids != self.pad_id).long().cumsum(1) - 1).clamp(min=0)

    def _mask(self, ids: torch.Tensor) -> torch.Tensor | None:
        """The MMU omni-attention mask; None (plain causal, no dense mask) when there is neither
        padding nor an image: upstream's mask is then exactly causal."""
        if not bool(((ids == self.pad_id) | (ids == self.sp["<|eoi|>"])).any()):
            return None
        return mmu_attention_mask(ids, self.pad_id, self.sp["<|eoi|>"])

    def speed_context(self, length: int) -> torch.Tensor:
        return speed_context_ids(length, self.tokenizer)

    def _static_logits(self, ids: torch.Tensor, positions: torch.Tensor, attend) -> torch.Tensor:
        return self.model.logits(self.model.run(ids, positions, attend)[:, -1])

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, max_new_tokens: int = 0) -> DecodeState | StaticDecoder:
        ids = input_ids.to(self._device)
        if self.mode == "as_published":
            return DecodeState(ids, self._recomputed_logits(ids))
        cfg = self.cfg
        decoder = StaticDecoder(self._static_logits, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim,
                                self._device, self.model.showo.lm_head.weight.dtype,
                                budget=max_new_tokens or DECODE_BUDGET, pool=self.graph_pool)
        decoder.prefill(ids, self._positions(ids), valid=ids != self.pad_id, mask=self._mask(ids))
        return decoder

    @torch.inference_mode()
    def decode_step(self, state: DecodeState | StaticDecoder, token: torch.Tensor) -> torch.Tensor:
        if isinstance(state, StaticDecoder):
            return state.step(token.to(self._device))
        state.ids = torch.cat([state.ids, token.to(self._device).view(-1, 1)], dim=1)
        state.logits = self._recomputed_logits(state.ids)
        return state.logits

    def speed_settings(self) -> dict[str, Any]:
        best = self.mode == "best"
        return {"cuda_graphs": best and self._device.type == "cuda", "attention": "sdpa (omni-attention mask)",
                "cache": "static KV cache" if best else "no KV cache (recomputes the sequence)"}

    def _recomputed_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """As upstream's `mmu_generate`: the whole sequence under the dense mask (built whatever the prompt)
        and fp32 logits for every position and the whole vocabulary; returns the last position's (B, V)."""
        mask = mmu_attention_mask(ids, self.pad_id, self.sp["<|eoi|>"])
        return self.model.logits(self.model.hidden(ids, mask, self._positions(ids)))[:, -1]

    def generate_text(self, requests: Sequence[Request]) -> list[str]:
        return self.generate_prepared(self.prepare_text(requests))

    @torch.inference_mode()
    def generate_prepared(self, items: Sequence[Prepared]) -> list[str]:
        limits = token_limits([p.request for p in items], 100)  # greedy, as upstream's top_k=1
        state = self.prefill(self.mmu_ids(items), max_new_tokens=max(limits))
        tokens = greedy(state.logits, lambda token: self.decode_step(state, token), {self.eos_id}, max(limits))
        return decode_answers(self.tokenizer, tokens, limits, {self.eos_id})

    # -- text-to-image --
    def t2i_prefix(self, prompts: list[str]) -> list[list[int]]:
        """Upstream `t2i_gen_prompt`: [<|t2i|>, <|sot|>, text, <|eot|>] left-padded with [PAD] to
        max_text_len + 1, or cut to max_text_len tokens + <|eot|>."""
        width = self.cfg.max_text_len + 1
        rows = []
        for text in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]:
            if not text or text[0] != self.bos_id:
                text = [self.bos_id] + text
            ids = [self.sp["<|t2i|>"]] + text + [self.eos_id]
            ids = ids if len(ids) <= width else ids[:width - 1] + [self.eos_id]
            rows.append([self.pad_id] * (width - len(ids)) + ids)
        return rows

    @torch.inference_mode()
    def generate_image_tokens(self, requests: Sequence[Request]) -> torch.Tensor:
        cfg, g = self.cfg, self.guidance_scale
        n, prefix_len = cfg.num_vq_tokens, cfg.max_text_len + 1
        prefixes = self.t2i_prefix([r.prompt for r in requests])
        if g > 0:
            prefixes += self.t2i_prefix([""] * len(requests))
        image = [self.sp["<|soi|>"]] + [cfg.mask_token_id] * n + [self.sp["<|eoi|>"]]
        ids = torch.tensor([p + image for p in prefixes], device=self._device)
        mask = t2i_attention_mask(ids, self.pad_id, self.sp["<|soi|>"], self.sp["<|eoi|>"])
        image_vocab = slice(cfg.image_offset, cfg.vocab_size - 1)
        pos = torch.arange(ids.shape[1], device=self._device)
        cache = None
        if self.mode == "best":  # text rows never see the image: compute them once
            cache = KVCache(cfg, ids.shape[0], prefix_len, self._device, self.model.showo.lm_head.weight.dtype)
            self.model.hidden(ids[:, :prefix_len], mask[:, :, :prefix_len, :prefix_len], pos[:prefix_len], cache)

        def logits_fn(codes: torch.Tensor) -> torch.Tensor:
            tokens = torch.where(codes == cfg.mask_token_id, cfg.mask_token_id, codes + cfg.image_offset)
            ids[:, prefix_len + 1:prefix_len + 1 + n] = tokens.repeat(2 if g > 0 else 1, 1)
            if cache is None:
                logits = self.model(ids, mask)[:, -(n + 1):-1]
                if g > 0:
                    cond, uncond = logits.chunk(2)
                    logits = (1 + g) * cond - g * uncond
                return logits[..., image_vocab]
            hidden = self.model.hidden(ids[:, prefix_len:], mask[:, :, prefix_len:], pos[prefix_len:], cache,
                                       commit=False)
            logits = self.model.logits(hidden[:, 1:n + 1], image_vocab)
            if g > 0:
                cond, uncond = logits.chunk(2)
                logits = (1 + g) * cond - g * uncond
            return logits

        generators = [torch.Generator(self._device).manual_seed(int(r.seed)) for r in requests]
        start = torch.full((len(requests), n), cfg.mask_token_id, device=self._device)
        codes = t2i_sample(logits_fn, start, self.timesteps, cfg.mask_token_id, generators, self.temperature)
        return codes.clamp(0, cfg.codebook_size - 1)

    @torch.inference_mode()
    def generate_images(self, requests: Sequence[Request]) -> list[Image.Image]:
        return to_pil(self.vq.decode_code(self.generate_image_tokens(requests)))

    @classmethod
    def weights_warning(cls, args: dict[str, Any]) -> str | None:
        return random_weights_warning(args["preset"])
