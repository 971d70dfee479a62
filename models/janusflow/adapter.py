"""`--model janusflow`: JanusFlow-1.3B behind omnibench's ModelAdapter contract.

model_args:
- `pretrained=<folder | hub id>` (default deepseek-ai/JanusFlow-1.3B), `vae=` (default
  stabilityai/sdxl-vae; needs the `diffusers` package); or `preset=tiny` (random weights, for tests); or
  `preset=full` (the full-size architecture and an SDXL-shaped VAE with random weights and a byte-level
  tokenizer, built on the device: for speed and memory measurement only, its outputs are noise).
- `mode=best` (default): the text-to-image prompt is run once and cached for all ODE steps;
  `prefill`/`decode_step` (the speed sweep's) decode over a static KV cache, in a CUDA graph on GPU
  (models/common/static_decode.py), and understanding decodes through them: what is evaluated is what is timed.
  `mode=as_published`: upstream's loop, whose cache bug recomputes the prompt at every step, and
  transformers' dynamic KV cache, eager, for understanding too, as upstream's `generate(use_cache=True)`.
- `system_prompt=` for understanding (default: VLChatProcessor's; `system_prompt=` empty for none).
- text-to-image: `cfg_weight` (default 2.0) and `num_inference_steps` (default 30), the README's call.

dtype `auto` is bfloat16 on CUDA (as published), float32 on CPU. Attention is SDPA, or FlashAttention-2
on CUDA when flash-attn is installed.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from omnibench.args import Arg
from omnibench.protocol import ModelAdapter, Prepared, Request, SpeedProtocol, random_weights_warning

from omnibench.models.common.decode import decode_answers, greedy, token_limits
from omnibench.models.common.presets import PRESET_ARG, mode_arg
from omnibench.models.common.dtypes import bfloat16_on_cuda, resolve_dtype
from omnibench.models.common.graphs import GraphPool
from omnibench.models.common.static_decode import DECODE_BUDGET, StaticDecoder, padded_causal_mask, speed_context_ids

from .checkpoint import (BOI_TAG, DEFAULT_PRETRAINED, DEFAULT_VAE, EOI_TAG, GEN_TAG, IMAGE_TAG, SYSTEM_PROMPT,
                         ImageProcessing, from_pretrained, load_vae, random_full, random_sdxl_vae,
                         tiny_checkpoint)
from .modeling_janusflow import JanusFlow, attn_implementation, llama_last_logits, rectified_flow_sample



def sft_prompt(user: str, system: str) -> str:
    """Janus `deepseek` conversation template: "{system}\\n\\nUser: {user}\\n\\nAssistant:", stripped."""
    head = f"{system}\n\n" if system else ""
    return f"{head}User: {user.strip()}\n\nAssistant:".strip()


def preprocess(img: Image.Image, p: ImageProcessing) -> torch.Tensor:
    """VLMImageProcessor: bicubic resize of the long side to image_size, pad to a centred square with
    int(mean * 255), rescale to [0, 1], normalise with the processor's mean/std."""
    img = img.convert("RGB")
    w, h = img.size
    longest = max(w, h)
    size = (max(int(w / longest * p.image_size), p.min_size), max(int(h / longest * p.image_size), p.min_size))
    img = img.resize(size, Image.BICUBIC)
    w, h = img.size
    if w != h:
        side = max(w, h)
        square = Image.new("RGB", (side, side), tuple(int(m * 255) for m in p.image_mean))
        square.paste(img, ((side - w) // 2, (side - h) // 2))
        img = square
    x = np.asarray(img, dtype=np.float32) * p.rescale_factor
    if p.do_normalize:
        x = (x - np.asarray(p.image_mean, np.float32)) / np.asarray(p.image_std, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)


@dataclass
class DecodeState:
    """Text decoding state: the HF KV cache, the (B, L) attention mask so far, each row's next
    position id, and the last position's logits (B, V)."""

    cache: Any
    attention_mask: torch.Tensor
    next_position: torch.Tensor
    logits: torch.Tensor


def prepare_requests(requests: Sequence[Request], tokenizer, bos_id: int, processing: ImageProcessing,
                     system_prompt: str) -> list[Prepared]:
    """Host side of understanding: every image preprocessed, the chat prompt (one <image_placeholder> line
    per image) tokenized as `JanusFlowAdapter.encode`. Picklable with its arguments bound."""
    return [Prepared(r, [preprocess(img, processing) for img in r.images],
                     [bos_id] + tokenizer.encode(sft_prompt("".join(f"{IMAGE_TAG}\n" for _ in r.images) + r.prompt,
                                                            system_prompt), add_special_tokens=False))
            for r in requests]


class JanusFlowAdapter(ModelAdapter, SpeedProtocol):
    """JanusFlow for understanding (`generate_text`, greedy) and text-to-image (`generate_images`).

    For the speed sweep:
    - `prefill(input_ids, max_new_tokens=0)`: reads a (B, L) batch of token ids (left-padded with the pad
      id; or, with `attention_mask` and `embeds`, `mmu_inputs`' prompt with its image embeddings) through the
      language model, filling its KV cache; returns a `DecodeState` (as_published: transformers' dynamic
      cache) or a `StaticDecoder` (best: static cache sized for `max_new_tokens`, default 512, grown past
      it; CUDA graph on GPU), whose `logits` are (B, V). `generate_text` decodes through the same two calls.
    - `decode_step(state, token)`: feeds one token per row (B,) and returns the next logits (B, V).
    - `speed_context(length)`: (1, length) ordinary text token ids (no pad, image or special token).
    """

    name = "janusflow"
    ARGS = (
        Arg("pretrained", str, DEFAULT_PRETRAINED, "JanusFlow checkpoint: a folder or hub id"),
        Arg("vae", str, DEFAULT_VAE, "SDXL VAE for text-to-image: a folder or hub id"),
        PRESET_ARG,
        mode_arg("prompt cached across ODE steps, static-cache CUDA-graph decode", "upstream's loop"),
        Arg("system_prompt", str, SYSTEM_PROMPT, "understanding system prompt (empty for none)"),
        Arg("cfg_weight", float, 2.0, "text-to-image classifier-free guidance weight"),
        Arg("num_inference_steps", int, 30, "text-to-image rectified-flow ODE steps"),
    )

    def __init__(self, device: str = "cpu", dtype: str = "auto", **model_args: Any) -> None:
        super().__init__(device, dtype, **model_args)
        torch_dtype = resolve_dtype(dtype, device, self.name, auto=bfloat16_on_cuda)
        args = self.args
        preset, self.mode = args["preset"], args["mode"]
        self.cfg_weight, self.steps = args["cfg_weight"], args["num_inference_steps"]
        self.system_prompt = args["system_prompt"]
        attn = attn_implementation(device, torch_dtype)
        if preset == "full":
            model, tok = random_full(device, torch_dtype, attn)
            self.tokenizer, self.processing, processor = tok, ImageProcessing(), {}
            self.vae_source = None  # a random SDXL-shaped VAE
        else:
            if preset == "tiny":
                root = tiny_checkpoint()
                source, self.vae_source = str(root), str(root / "vae")
            else:
                source, self.vae_source = args["pretrained"], args["vae"]
            model, self.tokenizer, self.processing, processor = from_pretrained(source, attn)
        self.model: JanusFlow = model.to(device=device, dtype=torch_dtype)
        self.torch_dtype = torch_dtype
        self.vae = None
        tok = self.tokenizer
        self.ids = {t: tok.convert_tokens_to_ids(t) for t in (IMAGE_TAG, BOI_TAG, EOI_TAG, GEN_TAG)}
        self.graph_pool = GraphPool()  # shared by the decode graphs of every prefill
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.bos_id, self.eos_id = tok.bos_token_id, tok.eos_token_id
        self.num_image_tokens = int(processor.get("num_image_tokens", model.config.siglip.num_tokens))

    @property
    def _device(self) -> torch.device:
        return self.model.beg_of_und_embed.device

    def _lm(self, embeds: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, cache=None):
        """Last hidden states and the cache of the Llama body (transformers' LlamaModel). The cache goes in and
        comes out by position: transformers 4 names it `past_key_values`, 5 `cache`."""
        out = self.model.language_model.model(None, attention_mask, positions, cache, embeds, use_cache=True)
        return out[0], out[1]

    def encode(self, text: str) -> list[int]:
        """<bos> + tokens: what upstream's LlamaTokenizerFast (add_bos_token) gives, whatever the
        serialised post-processor says."""
        return [self.bos_id] + self.tokenizer.encode(text, add_special_tokens=False)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.language_model.get_input_embeddings()(ids)

    @staticmethod
    def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
        """transformers' generate(): cumulative count of real tokens, 1 at pads."""
        return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)

    # -- understanding --
    def preprocessor(self):
        return functools.partial(prepare_requests, tokenizer=self.tokenizer, bos_id=self.bos_id,
                                 processing=self.processing, system_prompt=self.system_prompt)

    def prepare_text(self, requests: Sequence[Request]) -> list[Prepared]:
        return self.preprocessor()(requests)

    def mmu_inputs(self, items: Sequence[Prepared]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded ids (B, L), attention mask (B, L) and input embeddings (B, L, D) -- `prefill`'s
        arguments: the chat prompt with each image's placeholder expanded to <begin_of_image> + n x
        <image_placeholder> + <end_of_image>, whose embeddings (<begin_of_image> and the placeholders) are
        then replaced by the image embeddings."""
        rows, slots = [], []
        for p in items:
            row, slot = [], []
            for t in p.ids:
                if t == self.ids[IMAGE_TAG]:
                    slot.append(len(row))
                    row += [self.ids[BOI_TAG]] + [t] * self.num_image_tokens + [self.ids[EOI_TAG]]
                else:
                    row.append(t)
            rows.append(row)
            slots.append(slot)
        width = max(len(r) for r in rows)
        ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows], device=self._device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self._device)
        embeds = self._embed(ids)
        images = [px for p in items for px in p.pixels]
        if images:
            pixels = torch.stack(images).to(self._device)
            feats = self.model.image_embeddings(pixels).to(embeds.dtype)
            k = 0
            for i, (row, slot) in enumerate(zip(rows, slots)):
                for start in slot:
                    at = width - len(row) + start
                    embeds[i, at:at + feats.shape[1]] = feats[k]
                    k += 1
        return ids, mask, embeds

    def speed_context(self, length: int) -> torch.Tensor:
        return speed_context_ids(length, self.tokenizer)

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                embeds: torch.Tensor | None = None, max_new_tokens: int = 0) -> DecodeState | StaticDecoder:
        ids = input_ids.to(self._device)
        mask = (ids != self.pad_id).long() if attention_mask is None else attention_mask.to(self._device)
        positions, lm = self._positions(mask), self.model.language_model
        if self.mode == "as_published":  # transformers' dynamic cache, as upstream's generate(use_cache=True)
            hidden, cache = self._lm(self._embed(ids) if embeds is None else embeds, mask, positions)
            return DecodeState(cache, mask, positions[:, -1] + 1, lm.lm_head(hidden[:, -1]).float())
        attn = lm.model.layers[0].self_attn
        decoder = StaticDecoder(functools.partial(llama_last_logits, lm), len(lm.model.layers),
                                attn.k_proj.out_features // attn.head_dim, attn.head_dim, self._device,
                                lm.lm_head.weight.dtype, max_new_tokens or DECODE_BUDGET, pool=self.graph_pool)
        valid = mask.bool()
        decoder.prefill(ids, positions, valid=valid, mask=None if bool(valid.all()) else padded_causal_mask(valid),
                        embeds=embeds)
        return decoder

    @torch.inference_mode()
    def decode_step(self, state: DecodeState | StaticDecoder, token: torch.Tensor) -> torch.Tensor:
        if isinstance(state, StaticDecoder):
            return state.step(token.to(self._device))
        token = token.to(self._device).view(-1, 1)
        state.attention_mask = torch.cat([state.attention_mask, torch.ones_like(token)], dim=1)
        hidden, state.cache = self._lm(self._embed(token), state.attention_mask, state.next_position[:, None],
                                       state.cache)
        state.next_position = state.next_position + 1
        state.logits = self.model.language_model.lm_head(hidden[:, -1]).float()
        return state.logits

    def speed_settings(self) -> dict[str, Any]:
        best = self.mode == "best"
        return {"cuda_graphs": best and self._device.type == "cuda",
                "attention": self.model.language_model.config._attn_implementation,
                "cache": "static KV cache" if best else "dynamic KV cache (transformers)"}

    def generate_text(self, requests: Sequence[Request]) -> list[str]:
        return self.generate_prepared(self.prepare_text(requests))

    @torch.inference_mode()
    def generate_prepared(self, items: Sequence[Prepared]) -> list[str]:
        limits = token_limits([p.request for p in items], 512)  # README: 512
        state = self.prefill(*self.mmu_inputs(items), max_new_tokens=max(limits))
        tokens = greedy(state.logits, lambda token: self.decode_step(state, token), {self.eos_id}, max(limits))
        return decode_answers(self.tokenizer, tokens, limits, {self.eos_id})

    # -- text-to-image --
    def t2i_prompt(self, requests: Sequence[Request]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Upstream's CFG batch, left-padded: rows [0, B) the prompt "User: {caption}\\n\\nAssistant:"
        + <begin_of_generation> minus that last token (its place goes to t_emb); rows [B, 2B) the same
        length of <bos> then masked pads. Returns embeddings (2B, W, D), attention mask (2B, W) and
        position ids (2B, W) that number each prompt from 0 as if it were alone."""
        prompts = [self.encode(sft_prompt(r.prompt, "") + GEN_TAG)[:-1] for r in requests]
        width = max(len(p) for p in prompts)
        ids, mask, pads = [], [], []
        for uncond in (False, True):
            for p in prompts:
                pad = width - len(p)
                body = [self.bos_id] + [self.pad_id] * (len(p) - 1) if uncond else p
                ids.append([self.pad_id] * pad + body)
                mask.append([0] * pad + ([1] + [0] * (len(p) - 1) if uncond else [1] * len(p)))
                pads.append(pad)
        ids = torch.tensor(ids, device=self._device)
        mask = torch.tensor(mask, device=self._device)
        pos = (torch.arange(width, device=self._device)[None] - torch.tensor(pads, device=self._device)[:, None])
        return self._embed(ids), mask, pos.clamp(min=0)

    @torch.inference_mode()
    def generate_latents(self, requests: Sequence[Request]) -> torch.Tensor:
        g = self.model.config.gen
        prompt, mask, pos = self.t2i_prompt(requests)
        n = g.num_tokens
        full_mask = torch.cat([mask, torch.ones(mask.shape[0], 1 + n, dtype=mask.dtype, device=self._device)], 1)
        tail_pos = pos[:, -1:] + 1 + torch.arange(1 + n, device=self._device)[None]
        cache = None
        if self.mode == "best":
            _, cache = self._lm(prompt, mask, pos)

        def run_llm(extra: torch.Tensor) -> torch.Tensor:
            if cache is None:  # as published: the whole sequence at every step
                hidden, _ = self._lm(torch.cat([prompt, extra], 1), full_mask, torch.cat([pos, tail_pos], 1))
                return hidden
            hidden, _ = self._lm(extra, full_mask, tail_pos, cache)
            cache.crop(-(1 + n))  # drop this step's positions: the prompt stays for the next step
            return hidden

        gens = [torch.Generator().manual_seed(int(r.seed)) for r in requests]
        shape = (g.latent_channels, g.latent_size, g.latent_size)
        z = torch.stack([torch.randn(shape, generator=gen) for gen in gens]).to(self._device, self.torch_dtype)
        return rectified_flow_sample(lambda zz, t: self.model.velocity(run_llm, zz, t), z, self.steps, self.cfg_weight)

    @torch.inference_mode()
    def generate_images(self, requests: Sequence[Request]) -> list[Image.Image]:
        z = self.generate_latents(requests)
        if self.vae is None:
            self.vae = (random_sdxl_vae(self._device, self.torch_dtype) if self.vae_source is None
                        else load_vae(self.vae_source, self._device, self.torch_dtype))
        x = self.vae.decode(z / self.vae.config.scaling_factor).sample
        # torchvision save_image of clip(-1, 1) * 0.5 + 0.5: times 255, + 0.5, truncated to uint8.
        x = (x.float().clamp(-1, 1) * 0.5 + 0.5).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
        return [Image.fromarray(a) for a in x.permute(0, 2, 3, 1).cpu().numpy()]

    @classmethod
    def weights_warning(cls, args: dict[str, Any]) -> str | None:
        return random_weights_warning(args["preset"])
