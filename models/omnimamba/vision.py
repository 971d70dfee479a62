"""OmniMamba's understanding encoder (Cobra/Prismatic "dinosiglip-vit-so-384px"): DINOv2 ViT-L/14 with 4
registers and SigLIP So400m/14, both at 384 px, each giving its second-to-last block's 27x27 = 729
patch features (no final norm, DINOv2's cls and register tokens dropped), concatenated channel-wise
(1024 + 1152) and sent through the fused GELU-MLP projector.

The towers are transformers' `Dinov2WithRegistersModel` and `SiglipVisionModel`. Upstream built them
with timm, so its checkpoint holds timm names (`vision_backbone.dino_featurizer.blocks.0.attn.qkv.weight`);
`timm_to_hf` / `hf_to_timm` are the explicit map between the two (the fused qkv is split/joined)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

# timm's data configs of the two towers (resize-naive strategy: square bicubic resize, no crop).
DINO_MEAN, DINO_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@dataclass
class VisionConfig:
    image_size: int = 384
    patch_size: int = 14
    dino_width: int = 1024
    dino_layers: int = 24
    dino_heads: int = 16
    dino_registers: int = 4
    siglip_width: int = 1152
    siglip_layers: int = 27
    siglip_heads: int = 16
    siglip_mlp: int = 4304

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def embed_dim(self) -> int:
        return self.dino_width + self.siglip_width


def _pixels(img: Image.Image, size: int, mean, std) -> torch.Tensor:
    arr = np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1)


class DinoSigLIPBackbone(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        from transformers import (Dinov2WithRegistersConfig, Dinov2WithRegistersModel, SiglipVisionConfig,
                                  SiglipVisionModel)

        self.config = cfg
        self.dino_featurizer = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
            hidden_size=cfg.dino_width, num_hidden_layers=cfg.dino_layers, num_attention_heads=cfg.dino_heads,
            mlp_ratio=4, image_size=cfg.image_size, patch_size=cfg.patch_size,
            num_register_tokens=cfg.dino_registers, layer_norm_eps=1e-6, layerscale_value=1.0))
        self.siglip_featurizer = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=cfg.siglip_width, num_hidden_layers=cfg.siglip_layers,
            num_attention_heads=cfg.siglip_heads, intermediate_size=cfg.siglip_mlp,
            image_size=cfg.image_size, patch_size=cfg.patch_size, layer_norm_eps=1e-6,
            hidden_act="gelu_pytorch_tanh"))
        with torch.no_grad():  # timm's layout has no position for the cls token: keep HF's cls row at 0
            self.dino_featurizer.embeddings.position_embeddings[:, :1].zero_()

    def preprocess(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        s = self.config.image_size
        return {"dino": torch.stack([_pixels(i, s, DINO_MEAN, DINO_STD) for i in images]),
                "siglip": torch.stack([_pixels(i, s, SIGLIP_MEAN, SIGLIP_STD) for i in images])}

    def forward(self, pixels: dict[str, torch.Tensor]) -> torch.Tensor:
        dtype = self.dino_featurizer.embeddings.cls_token.dtype
        dino = self.dino_featurizer(pixel_values=pixels["dino"].to(dtype), output_hidden_states=True)
        siglip = self.siglip_featurizer(pixel_values=pixels["siglip"].to(dtype), output_hidden_states=True)
        prefix = 1 + self.config.dino_registers
        return torch.cat([dino.hidden_states[-2][:, prefix:], siglip.hidden_states[-2]], dim=2)


class FusedMLPProjector(nn.Module):
    """Linear(d, 4d) GELU Linear(4d, llm) GELU Linear(llm, llm), as `projector.projector.{0,2,4}`."""

    def __init__(self, vision_dim: int, llm_dim: int):
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(vision_dim, 4 * vision_dim), nn.GELU(),
                                       nn.Linear(4 * vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))

    def forward(self, x):
        return self.projector(x)


# --- timm <-> transformers names -------------------------------------------------------------------
# Per-block renames (timm suffix -> transformers suffix); the fused qkv is handled separately.
_DINO_BLOCK = {"norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1",
               "mlp.fc2": "mlp.fc2"}
_SIGLIP_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
                 "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_DINO_TOP = {"patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
             "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
             "cls_token": "embeddings.cls_token", "reg_token": "embeddings.register_tokens",
             "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
_SIGLIP_TOP = {"patch_embed.proj.weight": "embeddings.patch_embedding.weight",
               "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
               "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias",
               "attn_pool.latent": "head.probe", "attn_pool.proj.weight": "head.attention.out_proj.weight",
               "attn_pool.proj.bias": "head.attention.out_proj.bias", "attn_pool.norm.weight": "head.layernorm.weight",
               "attn_pool.norm.bias": "head.layernorm.bias", "attn_pool.mlp.fc1.weight": "head.mlp.fc1.weight",
               "attn_pool.mlp.fc1.bias": "head.mlp.fc1.bias", "attn_pool.mlp.fc2.weight": "head.mlp.fc2.weight",
               "attn_pool.mlp.fc2.bias": "head.mlp.fc2.bias"}


def _tower_names(tower: str, n_layers: int) -> dict[str, str]:
    """timm key -> transformers key, for every key that is a plain rename."""
    dino = tower == "dino"
    names = dict(_DINO_TOP if dino else _SIGLIP_TOP)
    block, prefix = (_DINO_BLOCK, "encoder.layer") if dino else (_SIGLIP_BLOCK, "encoder.layers")
    for i in range(n_layers):
        for src, dst in block.items():
            for leaf in ("weight", "bias"):
                names[f"blocks.{i}.{src}.{leaf}"] = f"{prefix}.{i}.{dst}.{leaf}"
        if dino:
            names[f"blocks.{i}.ls1.gamma"] = f"{prefix}.{i}.layer_scale1.lambda1"
            names[f"blocks.{i}.ls2.gamma"] = f"{prefix}.{i}.layer_scale2.lambda1"
    return names


def timm_to_hf(sd: dict[str, torch.Tensor], tower: str, n_layers: int) -> dict[str, torch.Tensor]:
    """One tower's timm state dict (prefix stripped) -> transformers names. Keys it does not know are
    passed through unchanged, so the strict load that follows names them."""
    names = _tower_names(tower, n_layers)
    qkv = "attention.{}_proj" if tower == "dino" else "self_attn.{}_proj"
    layer = "encoder.layer" if tower == "dino" else "encoder.layers"
    out: dict[str, torch.Tensor] = {}
    for key, val in sd.items():
        parts = key.split(".")
        if key in names:
            out[names[key]] = val
        elif len(parts) == 5 and parts[0] == "blocks" and parts[2:4] == ["attn", "qkv"]:
            for name, chunk in zip("qkv", val.chunk(3, dim=0)):
                out[f"{layer}.{parts[1]}.{qkv.format(name)}.{parts[4]}"] = chunk
        elif key == "pos_embed" and tower == "dino":
            # timm's reg4 DINOv2 adds no position to the cls token (no_embed_class); HF keeps a cls row.
            out["embeddings.position_embeddings"] = torch.cat([torch.zeros_like(val[:, :1]), val], dim=1)
        elif key == "pos_embed":
            out["embeddings.position_embedding.weight"] = val[0]
        elif key in ("attn_pool.q.weight", "attn_pool.q.bias"):
            leaf = parts[-1]
            out[f"head.attention.in_proj_{leaf}"] = torch.cat([val, sd[f"attn_pool.kv.{leaf}"]], dim=0)
        elif key.startswith("attn_pool.kv."):
            continue
        else:
            out[key] = val
    if tower == "dino" and "embeddings.mask_token" not in out:
        # Only used for masked pre-training; timm has no such parameter.
        width = out["embeddings.cls_token"].shape[-1] if "embeddings.cls_token" in out else 0
        out["embeddings.mask_token"] = torch.zeros(1, width)
    return out


def hf_to_timm(sd: dict[str, torch.Tensor], tower: str, n_layers: int) -> dict[str, torch.Tensor]:
    """The inverse of `timm_to_hf`, for writing checkpoints under upstream's names."""
    back = {v: k for k, v in _tower_names(tower, n_layers).items()}
    qkv = "attention.{}_proj" if tower == "dino" else "self_attn.{}_proj"
    layer = "encoder.layer" if tower == "dino" else "encoder.layers"
    out: dict[str, torch.Tensor] = {}
    for key, val in sd.items():
        if key in back:
            out[back[key]] = val
    for i in range(n_layers):
        for leaf in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat(
                [sd[f"{layer}.{i}.{qkv.format(n)}.{leaf}"] for n in "qkv"], dim=0)
    if tower == "dino":
        out["pos_embed"] = sd["embeddings.position_embeddings"][:, 1:]
    else:
        out["pos_embed"] = sd["embeddings.position_embedding.weight"][None]
        width = sd["head.attention.out_proj.weight"].shape[0]
        for leaf in ("weight", "bias"):
            w = sd[f"head.attention.in_proj_{leaf}"]
            out[f"attn_pool.q.{leaf}"], out[f"attn_pool.kv.{leaf}"] = w[:width], w[width:]
    return out
