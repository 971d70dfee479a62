"""JanusFlow (deepseek-ai/Janus `janus/janusflow/models/modeling_vlm.py`, MultiModalityCausalLM):
DeepSeek-LLM 1.3B (a Llama: transformers' LlamaForCausalLM), a SigLIP-L/16 384 px understanding
tower with a linear aligner, and rectified-flow generation in the SDXL-VAE latent space through the
shallow ConvNeXt encoder/decoder of `uvit.py`.

The SigLIP tower is transformers' SiglipVisionModel; upstream built it with timm, so the checkpoint
holds timm names under `vision_und_enc_model.vision_tower.` (`blocks.0.attn.qkv.weight`):
`official_state_dict` / `load_official_state_dict` map them explicitly (models/omnimamba/vision.py has
the map). Every other key loads as named.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from omnibench.models.common.timm_names import hf_to_timm, timm_to_hf
from omnibench.models.common.static_decode import ATTEND, Attend

from .uvit import GenConfig, ShallowUViTDecoder, ShallowUViTEncoder

TOWER = "vision_und_enc_model.vision_tower."
# The published 1.3B language model (deepseek-llm-1.3b family, as in Janus-1.3B's config).
LLM_DEFAULTS = dict(vocab_size=102400, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                    num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=16384,
                    rms_norm_eps=1e-6, rope_theta=10000.0, bos_token_id=100000, eos_token_id=100001,
                    hidden_act="silu", tie_word_embeddings=False)
# timm `siglip_large_patch16_384` (Janus siglip_vit.py SigLIP_MODEL_CONFIG).
SIGLIP_MODELS = {f"siglip_large_patch16_{s}": dict(image_size=s, patch_size=16, width=1024, layers=24, heads=16,
                                                   mlp=4096) for s in (256, 384)}


@dataclass
class SiglipConfig:
    image_size: int = 384
    patch_size: int = 16
    width: int = 1024
    layers: int = 24  # blocks kept: 24 + select_layer + 1 for select_layer <= 0
    heads: int = 16
    mlp: int = 4096
    # CLIPVisionTower's own Normalize (params pixel_mean / pixel_std), applied after the processor's.
    pixel_mean: tuple[float, ...] | None = None
    pixel_std: tuple[float, ...] | None = None

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class JanusFlowConfig:
    llm: dict = field(default_factory=lambda: dict(LLM_DEFAULTS))
    siglip: SiglipConfig = field(default_factory=SiglipConfig)
    gen: GenConfig = field(default_factory=GenConfig)

    @property
    def hidden_size(self) -> int:
        return self.llm["hidden_size"]

    @classmethod
    def from_upstream(cls, cfg: dict) -> "JanusFlowConfig":
        """From upstream's config.json (MultiModalityConfig): language_config and the `params` of the
        three vision configs; what is absent keeps the published values."""
        llm = dict(LLM_DEFAULTS)
        llm.update({k: v for k, v in cfg.get("language_config", {}).items() if not k.startswith("_")})
        und = cfg.get("vision_und_enc_config", {}).get("params", {})
        sig = dict(SIGLIP_MODELS.get(und.get("model_name", "siglip_large_patch16_384"), {}))
        sig.update({k: v for k, v in und.get("siglip", {}).items()})  # explicit sizes (our tiny preset)
        for key in ("image_size", "pixel_mean", "pixel_std"):
            if und.get(key) is not None:
                sig[key] = und[key]
        select = int(und.get("select_layer", -1))
        full = sig.get("layers", 24)
        sig["layers"] = min(full, full + select + 1) if select <= 0 else min(full, select)
        enc = cfg.get("vision_gen_enc_config", {}).get("params", {})
        dec = cfg.get("vision_gen_dec_config", {}).get("params", {})
        gen = GenConfig()
        for name, value in (("latent_channels", enc.get("input_channels")), ("stride", enc.get("stride")),
                            ("kernel_size", enc.get("kernel_size")), ("layers_in_middle", enc.get("layers_in_middle")),
                            ("padding", enc.get("padding")), ("norm_eps", enc.get("norm_eps")),
                            ("upsamples", dec.get("upsamples")),
                            ("latent_size", enc.get("latent_size"))):
            if value is not None:
                setattr(gen, name, value)
        if enc.get("block_out_channels"):
            gen.channels = enc["block_out_channels"][-1]
        return cls(llm=llm, siglip=SiglipConfig(**sig), gen=gen)

    def to_upstream(self) -> dict:
        """The inverse of `from_upstream` (sizes spelled out), for writing checkpoints."""
        g = self.gen
        return {
            "language_config": self.llm,
            "vision_und_enc_config": {"cls": "CLIPVisionTower", "params": {
                "model_name": "custom", "image_size": self.siglip.image_size, "select_layer": -1,
                "select_feature": "same", "siglip": asdict(self.siglip)}},
            "vision_gen_enc_config": {"cls": "ShallowUViTEncoder", "params": {
                "input_channels": g.latent_channels, "stride": g.stride, "kernel_size": g.kernel_size,
                "padding": g.padding,
                "block_out_channels": [g.channels], "layers_in_middle": g.layers_in_middle,
                "hidden_size": self.hidden_size, "norm_eps": g.norm_eps, "latent_size": g.latent_size}},
            "vision_gen_dec_config": {"cls": "ShallowUViTDecoder", "params": {
                "in_channels": g.channels, "out_channels": g.latent_channels, "block_out_channels": [g.channels],
                "upsamples": g.upsamples, "layers_in_middle": g.layers_in_middle, "hidden_size": self.hidden_size,
                "norm_eps": g.norm_eps}},
            "model_type": "multi_modality",
        }


def attn_implementation(device: str, dtype: torch.dtype) -> str:
    """FlashAttention-2 where it can run (CUDA, half precision, flash-attn installed), else SDPA."""
    import importlib.util

    if str(device).startswith("cuda") and dtype in (torch.bfloat16, torch.float16) \
            and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


class JanusFlow(nn.Module):
    def __init__(self, cfg: JanusFlowConfig, attn: str = "sdpa"):
        super().__init__()
        self.config = cfg
        d, s = cfg.hidden_size, cfg.siglip
        tower = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=s.width, intermediate_size=s.mlp, num_hidden_layers=s.layers, num_attention_heads=s.heads,
            image_size=s.image_size, patch_size=s.patch_size, layer_norm_eps=1e-6, hidden_act="gelu"))
        self.vision_und_enc_model = nn.Module()
        self.vision_und_enc_model.vision_tower = tower
        self.vision_und_enc_aligner = nn.Linear(s.width, d)
        self.beg_of_und_embed = nn.Parameter(torch.zeros(1, d))
        self.vision_gen_enc_model = ShallowUViTEncoder(cfg.gen, d)
        self.vision_gen_enc_aligner = nn.Linear(cfg.gen.channels, d)
        self.vision_gen_dec_model = ShallowUViTDecoder(cfg.gen, d)
        self.language_model = LlamaForCausalLM(LlamaConfig(**cfg.llm, attn_implementation=attn))
        self.vision_gen_dec_aligner_norm = LlamaRMSNorm(d, eps=cfg.llm["rms_norm_eps"])
        self.vision_gen_dec_aligner = nn.Linear(d, cfg.gen.channels)

    # -- understanding --
    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, 1 + patches, D): the learned begin-of-image embedding,
        then the aligned SigLIP features (last kept block, final LayerNorm applied)."""
        tower, s = self.vision_und_enc_model.vision_tower, self.config.siglip
        if s.pixel_mean is not None and s.pixel_std is not None:
            mean, std = (torch.tensor(v, device=pixels.device).view(1, -1, 1, 1) for v in (s.pixel_mean, s.pixel_std))
            pixels = (pixels - mean) / std
        feats = tower(pixel_values=pixels.to(self.vision_und_enc_aligner.weight.dtype)).last_hidden_state
        feats = self.vision_und_enc_aligner(feats)
        beg = self.beg_of_und_embed[0].view(1, 1, -1).expand(feats.shape[0], 1, -1)
        return torch.cat([beg, feats], dim=1)

    # -- generation --
    def velocity(self, prefix_fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:
        """Velocity of latents `z` (B, 4, H, W) at timesteps `t` (B,): encode z, let `prefix_fn` run the
        LLM over [prompt, t_emb, z tokens] (it gets the (B, 1 + n, D) embeddings to append and returns
        their last hidden states), decode the z positions back to a latent-shaped velocity."""
        feats, t_emb = self.vision_gen_enc_model(z, t)
        tokens = self.vision_gen_enc_aligner(feats.flatten(2).transpose(1, 2))
        hidden = prefix_fn(torch.cat([t_emb[:, None], tokens], dim=1))
        n = tokens.shape[1]
        h = self.vision_gen_dec_aligner(self.vision_gen_dec_aligner_norm(hidden[:, -n:]))
        side = int(round(n ** 0.5))
        h = h.reshape(h.shape[0], side, side, -1).permute(0, 3, 1, 2)
        return self.vision_gen_dec_model(h, feats, t_emb)


def rectified_flow_sample(velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z: torch.Tensor,
                          steps: int, cfg_weight: float) -> torch.Tensor:
    """Upstream's Euler ODE with classifier-free guidance: at step k of N, t = k / N * 1000 (in z's
    dtype); `velocity_fn(cat([z, z]), t)` gives conditional then unconditional velocities;
    v = w v_cond - (w - 1) v_uncond; z += v / N."""
    dt = torch.zeros_like(z) + 1.0 / steps
    for step in range(steps):
        t = torch.full((2 * z.shape[0],), step / steps * 1000.0, device=z.device).to(z.dtype)
        v_cond, v_uncond = velocity_fn(torch.cat([z, z], dim=0), t).chunk(2)
        z = z + dt * (cfg_weight * v_cond - (cfg_weight - 1.0) * v_uncond)
    return z


def llama_last_logits(lm: LlamaForCausalLM, ids: torch.Tensor, positions: torch.Tensor,
                      attend: Attend, embeds: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 logits (B, V) of the last of `ids` (B, n) at `positions` (B, n): LlamaForCausalLM's own forward
    with the attention proper left to `attend(layer, q, k, v)` -- the body the static-cache decoder runs
    (models/common/static_decode.py). `embeds` (B, n, D), when given, are the input embeddings (the
    understanding prompt, images inserted) in place of the embedded `ids`.

    The model keeps its own implementation (SDPA or FlashAttention-2) for everything else, so it runs under
    `ATTEND` for this call only; transformers then builds no mask and keeps no cache."""
    previous, lm.config._attn_implementation = lm.config._attn_implementation, ATTEND
    try:
        out = lm(input_ids=None if embeds is not None else ids, inputs_embeds=embeds, position_ids=positions,
                 use_cache=False, logits_to_keep=1, attend=attend)
    finally:
        lm.config._attn_implementation = previous
    return out.logits[:, -1].float()


# --- upstream names --------------------------------------------------------------------------------
def _tower_split(sd: dict) -> tuple[dict, dict, str]:
    """(tower keys without prefix, the rest, the prefix transformers puts inside SiglipVisionModel)."""
    inside = {k[len(TOWER):]: v for k, v in sd.items() if k.startswith(TOWER)}
    rest = {k: v for k, v in sd.items() if not k.startswith(TOWER)}
    inner = "vision_model." if any(k.startswith("vision_model.") for k in inside) else ""
    return {k[len(inner):]: v for k, v in inside.items()}, rest, inner


def official_state_dict(model: JanusFlow) -> dict[str, torch.Tensor]:
    """The model's weights under upstream's names (timm names inside the SigLIP tower)."""
    inside, rest, _ = _tower_split(model.state_dict())
    rest.update({TOWER + k: v for k, v in hf_to_timm(inside, "siglip", model.config.siglip.layers).items()})
    return rest


def to_model_state_dict(model: JanusFlow, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An upstream state dict under this model's names (the inverse of `official_state_dict`)."""
    _, _, inner = _tower_split(model.state_dict())
    inside = {k[len(TOWER):]: v for k, v in sd.items() if k.startswith(TOWER)}
    out = {k: v for k, v in sd.items() if not k.startswith(TOWER)}
    hf = timm_to_hf(inside, "siglip", model.config.siglip.layers)
    out.update({TOWER + inner + k: v for k, v in hf.items()})
    return out


def config_json(cfg: JanusFlowConfig) -> str:
    return json.dumps(cfg.to_upstream(), indent=1)
