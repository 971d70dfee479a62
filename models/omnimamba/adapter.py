"""`--model omnimamba`: OmniMamba behind omnibench's ModelAdapter contract.

model_args: `pretrained=<folder | .pth | hub id>` (default hustvl/OmniMamba), `preset=tiny` (random
tiny model for tests) or `preset=full` (full size, random weights: speed and memory only); `mode=best`
(CUDA-graph decode steps on fused.py's kernels: norms and conv inside the GEMVs; vision towers in CUDA
graphs; the LoRA merged into in_proj for prefill; default) or `mode=as_published` (eager decode steps on
mamba-ssm's ops);
T2I sampling `temperature`, `top_k`, `cfg_scale` (defaults: upstream's inference_t2i.py, i.e. greedy
top_k=1 and no guidance; with cfg_scale > 1 the unconditional prompt is upstream's null caption
"A picture"); `cuda_graphs=false` to decode eagerly on GPU, `fused_decode=false` for mamba-ssm's
separate norm, conv and state-update kernels in decode steps; `ssm_state=float32` keeps the recurrent
SSM state in fp32 (default `model`: the model's dtype, as upstream).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from omnibench.args import Arg
from omnibench.protocol import ModelAdapter, Prepared, Request, SpeedProtocol, random_weights_warning

from omnibench.models.common.decode import decode_answers, greedy, token_limits
from omnibench.models.common.presets import PRESET_ARG, mode_arg
from omnibench.models.common.dtypes import resolve_dtype

from .checkpoint import add_task_tokens, from_pretrained, random_full, tiny_base_tokenizer, tiny_checkpoint
from .modeling_omnimamba import DecodeState, OmniMamba
from .vision import resized

DEFAULT_PRETRAINED = "hustvl/OmniMamba"
NULL_CAPTION = "A picture"  # upstream MSCOCOFeatureDataset.null_prompt


def mmu_prompt(question: str, template: str = "inference") -> str:
    """`inference`: the released MMU script's conversation template ("phi1.5": empty system, roles
    USER/ASSISTANT, sep " "). `training`: the stage-2 instruction data's, Cobra's MambaPromptBuilder
    human turn ("<image>" removed, stripped, then "In: {q}\nOut: ", trailing space included: the answer
    was tokenized on its own after it and ends in <|endoftext|>)."""
    if template == "training":
        return f"In: {question.replace('<image>', '').strip()}\nOut: "
    return f"USER: {question} ASSISTANT:"


def sample_tokens(logits: torch.Tensor, temperature: float, top_k: int,
                  generators: list[torch.Generator]) -> torch.Tensor:
    """Upstream's `sample`: top_k == 1 is argmax; else top-k (0 = all), divided by temperature,
    drawn from the softmax with each row's own generator."""
    if top_k == 1:
        return logits.argmax(-1)
    if top_k > 0:
        logits, index = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1)
    else:
        index = None
    probs = torch.softmax(logits / temperature, dim=-1)
    picks = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])
    return picks if index is None else index.gather(1, picks[:, None])[:, 0]


def prepare_requests(requests: Sequence[Request], tokenizer, size: int, template: str) -> list[Prepared]:
    """Host side of understanding: the first image resized (uint8), the prompt in `template` tokenized
    (GPT-NeoX adds no BOS). Picklable with its arguments bound, for worker processes."""
    return [Prepared(r, [resized(r.images[0], size)] if r.images else [],
                     tokenizer(mmu_prompt(r.prompt, template)).input_ids) for r in requests]


class OmniMambaAdapter(ModelAdapter, SpeedProtocol):
    """OmniMamba for understanding (`generate_text`) and text-to-image (`generate_images`).

    For the speed sweep:
    - `prefill(input_ids)`: reads a (b, l) batch of text token ids once on the understanding (MMU)
      route and returns the recurrent `DecodeState`; `state.logits` holds the last position's logits.
    - `decode_step(state, token)`: feeds one token per sample (b,) and returns the next logits (b, V);
      the state advances in place (constant size: no cache grows with the context). On CUDA each step
      is a CUDA-graph replay.
    """

    name = "omnimamba"
    ARGS = (
        Arg("pretrained", str, DEFAULT_PRETRAINED, "checkpoint: a folder, an OmniMamba-1.3b.pth file or a hub id"),
        PRESET_ARG,
        mode_arg("CUDA-graph decode on fused kernels", "upstream's eager decode on mamba-ssm's ops"),
        Arg("cuda_graphs", bool, None, "decode steps, the vision towers and the text-to-image caption prefill in CUDA "
            "graphs (default: true in mode=best)"),
        Arg("fused_decode", bool, None, "decode steps on fused.py's kernels: norms and the conv update folded "
            "into the GEMVs, its own state update (default: true in mode=best)"),
        Arg("ssm_state", str, "model", "dtype of the recurrent SSM state: the model's, as upstream, or float32",
            ("model", "float32")),
        Arg("merge_lora", bool, None, "prefill reads in_proj with the task's LoRA merged into its weight, one GEMM, "
            "as decode steps do (default: true in mode=best; false: upstream's separate LoRA branch)"),
        Arg("temperature", float, 1.0, "text-to-image sampling temperature"),
        Arg("top_k", int, 1, "text-to-image top-k (1: greedy, upstream's default; 0: all)"),
        Arg("cfg_scale", float, 1.0, "text-to-image classifier-free guidance (1: none, upstream's default)"),
        Arg("dino_weights", str, None, "DINOv2 tower weights if the checkpoint lacks them (default: timm's "
            "published file, from the local hub cache)"),
        Arg("siglip_weights", str, None, "SigLIP tower weights if the checkpoint lacks them (default: timm's)"),
        Arg("vq_weights", str, None, "VQ-16 weights if the checkpoint lacks them (default: LlamaGen's vq_ds16_t2i.pt)"),
        Arg("prompt", str, "inference", "understanding prompt: the released inference script's 'USER: {q} "
            "ASSISTANT:' or the stage-2 training data's 'In: {q}\\nOut: '", ("inference", "training")),
    )

    def __init__(self, device: str = "cpu", dtype: str = "auto", **model_args: Any) -> None:
        super().__init__(device, dtype, **model_args)
        # Upstream's inference scripts run the model in float32; "auto" does the same.
        torch_dtype = resolve_dtype(dtype, device, self.name, auto=torch.float32)
        args = self.args
        preset, self.mode = args["preset"], args["mode"]
        self.model: OmniMamba
        self.weight_sources: dict[str, str] = {}
        if preset == "full":  # full size, random weights, tiny tokenizer: for speed and memory only
            self.model, self.tokenizer = random_full(device, torch_dtype), add_task_tokens(tiny_base_tokenizer())
        else:
            source = str(tiny_checkpoint()) if preset == "tiny" else args["pretrained"]
            self.model, self.tokenizer, self.weight_sources = from_pretrained(
                source, device, torch_dtype, {k: args[k] for k in ("dino_weights", "siglip_weights", "vq_weights")})
        # best: decode steps captured in CUDA graphs, on fused.py's kernels (three a layer); as_published:
        # upstream's eager step loop on mamba-ssm's ops.
        best = self.mode == "best"
        self.model.use_cuda_graphs = best if args["cuda_graphs"] is None else args["cuda_graphs"]
        self.model.use_fused_decode = best if args["fused_decode"] is None else args["fused_decode"]
        self.model.set_merged_lora(best if args["merge_lora"] is None else args["merge_lora"])
        self.model.ssm_state_dtype = args["ssm_state"]
        self.temperature, self.top_k, self.cfg_scale = args["temperature"], args["top_k"], args["cfg_scale"]
        tok = self.tokenizer
        self.ids = {t.strip("<|>"): tok.convert_tokens_to_ids(t) for t in
                    ("<|mmu|>", "<|t2i|>", "<|soi|>", "<|eoi|>", "<|sot|>", "<|eot|>")}
        self.stop_ids = {tok.eos_token_id, self.ids["eot"]}

    @property
    def _device(self) -> torch.device:
        return self.model.lm.backbone.embedding.weight.device

    # -- understanding --
    def mmu_text_ids(self, question: str) -> list[int]:
        """The question in the chosen template, tokenized (GPT-NeoX adds no BOS)."""
        return self.tokenizer(mmu_prompt(question, self.args["prompt"])).input_ids

    def mmu_embeddings(self, prompt: str | list[int], image_features: torch.Tensor | None) -> torch.Tensor:
        """[MMU][SOI] <729 image features> [EOI][SOT] prompt, plus MMU positions: (1, l, d). `prompt`: the
        question, or its ids from `mmu_text_ids`; no image: zeros where it would be (upstream's layout)."""
        text = self.mmu_text_ids(prompt) if isinstance(prompt, str) else prompt
        return self.mmu_batch_embeddings([text], {} if image_features is None else {0: image_features})[0]

    def mmu_batch_embeddings(self, ids: Sequence[list[int]],
                             image_features: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`mmu_embeddings` of each prompt (ids from `mmu_text_ids`; row i's image features (1, 729, d) in
        `image_features[i]`, zeros if none), right-padded with zeros: (b, l, d) and the lengths (b,). Built
        from one host-to-device copy, without waiting for the device: the prefill is queued behind the
        towers while they run."""
        m, n = self.model, self.model.config.vision.num_patches
        rows = [[self.ids["mmu"], self.ids["soi"], *[0] * n, self.ids["eoi"], self.ids["sot"], *t] for t in ids]
        longest = max(len(r) for r in rows)
        host = torch.tensor([[len(r)] + r + [0] * (longest - len(r)) for r in rows], dtype=torch.long)
        if self._device.type == "cuda":
            host = host.pin_memory()
        host = host.to(self._device, non_blocking=True)
        lengths, x = host[:, 0], m.text_embeddings(host[:, 1:])
        x[:, 2:2 + n] = 0  # upstream's text-only layout: zeros where the image would be
        for i, feats in image_features.items():
            x[i, 2:2 + n] = feats[0].to(x.dtype)
        x = m.with_mmu_positions(x)
        pad = torch.arange(longest, device=x.device)[None, :] >= lengths[:, None]
        return x.masked_fill(pad[..., None], 0), lengths

    def preprocessor(self):
        return functools.partial(prepare_requests, tokenizer=self.tokenizer, size=self.model.config.vision.image_size,
                                 template=self.args["prompt"])

    def prepare_text(self, requests: Sequence[Request]) -> list[Prepared]:
        return self.preprocessor()(requests)

    def generate_text(self, requests: Sequence[Request]) -> list[str]:
        return self.generate_prepared(self.prepare_text(requests))

    @torch.inference_mode()
    def generate_prepared(self, items: Sequence[Prepared]) -> list[str]:
        m = self.model
        with_image = [i for i, p in enumerate(items) if p.pixels]
        feats: dict[int, torch.Tensor] = {}
        if with_image:  # one image per request (the first), as upstream
            out = m.image_features(torch.stack([items[i].pixels[0] for i in with_image]))
            feats = {i: out[j: j + 1] for j, i in enumerate(with_image)}
        # One prefill for the batch: prompts right-padded, each read to its own length (the padding
        # neither reaches a prompt's outputs nor changes its state; Mamba2Mixer.forward), then one decode.
        embeds, lengths = self.mmu_batch_embeddings([p.ids for p in items], feats)
        state, first = m.prefill(embeds, "mmu", lengths)
        requests = [p.request for p in items]
        limits = token_limits(requests, 1024)
        tokens = greedy(first, lambda token: self.decode_step(state, token), self.stop_ids, max(limits))
        return decode_answers(self.tokenizer, tokens, limits, self.stop_ids)

    # -- text to image --
    def t2i_ids(self, caption: str) -> list[int]:
        """[T2I][SOT] caption (first caption_len tokens, left-padded with [PAD]) [EOT][SOI]."""
        n = self.model.config.caption_len
        text = self.tokenizer(caption).input_ids[:n]
        pad = [self.tokenizer.pad_token_id] * (n - len(text))
        return [self.ids["t2i"], self.ids["sot"], *pad, *text, self.ids["eot"], self.ids["soi"]]

    @torch.inference_mode()
    def generate_image_tokens(self, requests: Sequence[Request]) -> torch.Tensor:
        m, cfg = self.model, self.cfg_scale
        captions = [r.prompt for r in requests] + ([NULL_CAPTION] * len(requests) if cfg != 1.0 else [])
        ids = torch.tensor([self.t2i_ids(c) for c in captions], device=self._device)
        state, logits = m.prefill(m.caption_embeddings(ids), "t2i")
        gens = [torch.Generator(self._device).manual_seed(int(r.seed)) for r in requests]
        out = []
        for i in range(m.config.num_image_tokens):
            if cfg != 1.0:
                cond, uncond = logits.chunk(2)
                logits = uncond + cfg * (cond - uncond)
            token = sample_tokens(logits, self.temperature, self.top_k, gens)
            out.append(token)
            if i + 1 < m.config.num_image_tokens:
                logits = m.step(state, token.repeat(2) if cfg != 1.0 else token)
        return torch.stack(out, dim=1)

    @torch.inference_mode()
    def generate_images(self, requests: Sequence[Request]) -> list[Image.Image]:
        codes = self.generate_image_tokens(requests)
        pixels = self.model.llm_backbone.vqvae.decode_code(codes).float()
        pixels = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(np.ascontiguousarray(p)) for p in pixels]

    # -- speed sweep --
    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, max_new_tokens: int = 0) -> DecodeState:
        # A recurrent state has one size whatever follows: max_new_tokens sizes nothing.
        m = self.model
        embeds = m.with_mmu_positions(m.text_embeddings(input_ids.to(self._device)))
        state, logits = m.prefill(embeds, "mmu")
        state.logits = logits
        return state

    def decode_step(self, state: DecodeState, token: torch.Tensor) -> torch.Tensor:
        return self.model.step(state, token.to(self._device))

    def speed_settings(self) -> dict[str, Any]:
        from .fused import pdl_enabled
        from .ssd import use_kernels
        kernels = use_kernels(self._device)  # graphs and fused kernels run only where the kernels do
        fused = kernels and self.model.use_fused_decode
        return {"cuda_graphs": kernels and self.model.use_cuda_graphs, "fused_decode": fused,
                "pdl": fused and pdl_enabled(self._device),
                "ssm_kernels": "mamba-ssm (Triton)" if kernels else "PyTorch", "cache": "recurrent state",
                "ssm_state": self.model.ssm_state_dtype,
                "merged_lora_prefill": self.model.lm.backbone.layers[0].mixer.merge_lora}

    @classmethod
    def weights_warning(cls, args: dict[str, Any]) -> str | None:
        return random_weights_warning(args["preset"])

    def provenance(self) -> dict[str, Any]:
        return {"submodules_from_their_own_weights": self.weight_sources}
