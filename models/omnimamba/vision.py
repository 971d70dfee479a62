"""OmniMamba's understanding encoder (Cobra/Prismatic "dinosiglip-vit-so-384px"): DINOv2 ViT-L/14 with 4
registers and SigLIP So400m/14, both at 384 px, each giving its second-to-last block's 27x27 = 729
patch features (no final norm, DINOv2's cls and register tokens dropped), concatenated channel-wise
(1024 + 1152) and sent through the fused GELU-MLP projector.

The towers are transformers' `Dinov2WithRegistersModel` and `SiglipVisionModel`. Upstream built them
with timm, so its checkpoint holds timm names (`vision_backbone.dino_featurizer.blocks.0.attn.qkv.weight`);
`models.common.timm_names` maps the two (the fused qkv is split/joined)."""
from __future__ import annotations

import functools

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
    # DINOv2 ViT-L/14 with registers (timm vit_large_patch14_reg4_dinov2.lvd142m)
    dino_width: int = 1024
    dino_layers: int = 24
    dino_heads: int = 16
    dino_registers: int = 4
    # SigLIP so400m/14 at 384 px (timm vit_so400m_patch14_siglip_384)
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


def resized(img: Image.Image, size: int) -> torch.Tensor:
    """The square bicubic resize both towers' transforms start with, as uint8 (3, size, size): the
    host-side part of preprocessing (rescale and normalisation run on the device, in float32)."""
    arr = np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def normalised(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """timm's ToTensor + Normalize on uint8 (b, 3, s, s): x / 255, minus mean, over std, in float32."""
    m, s = _per_channel(tuple(mean), pixels.device), _per_channel(tuple(std), pixels.device)
    return (pixels.float() / 255.0 - m) / s


@functools.lru_cache(maxsize=None)
def _per_channel(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(c, 1, 1) float32 constants, made once per device: a CUDA-graph capture of the towers cannot copy
    them from the host."""
    return torch.tensor(values, dtype=torch.float32, device=device)[:, None, None]


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
            # Upstream builds this tower with timm 0.9.10's vit_so400m_patch14_siglip_384, whose MLP uses
            # nn.GELU (exact, erf), not the tanh approximation of transformers' SigLIP default.
            hidden_act="gelu"))
        with torch.no_grad():  # timm's layout has no position for the cls token: keep HF's cls row at 0
            self.dino_featurizer.embeddings.position_embeddings[:, :1].zero_()

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """uint8 (b, 3, s, s): each image resized once; both towers normalise it their own way in `forward`."""
        return torch.stack([resized(i, self.config.image_size) for i in images])

    def forward(self, pixels: torch.Tensor, run_last_block: bool = False) -> torch.Tensor:
        """The second-to-last block's output of each tower. Upstream (timm's `get_intermediate_layers`) runs
        every block and keeps that one; here the last block is not run at all (the same numbers, ~4% less
        work) unless `run_last_block`. The output is taken by a hook on that block, not from transformers'
        `hidden_states` (whose recorder in 5.x hooks the blocks present at a model's first call)."""
        dtype = self.dino_featurizer.embeddings.cls_token.dtype
        siglip = getattr(self.siglip_featurizer, "vision_model", self.siglip_featurizer)  # transformers 5.17 | 5.24
        dino = second_to_last(self.dino_featurizer, self.dino_featurizer.encoder, "layer",
                              normalised(pixels, DINO_MEAN, DINO_STD).to(dtype), run_last_block)
        sig = second_to_last(self.siglip_featurizer, siglip.encoder, "layers",
                             normalised(pixels, SIGLIP_MEAN, SIGLIP_STD).to(dtype), run_last_block)
        return torch.cat([dino[:, 1 + self.config.dino_registers:], sig], dim=2)


def second_to_last(model: nn.Module, encoder: nn.Module, name: str, pixel_values: torch.Tensor,
                   run_last_block: bool) -> torch.Tensor:
    """The output of the second-to-last block of `encoder.<name>` when `model` reads `pixel_values`; the
    last block is left out for the call (its weights stay put) unless `run_last_block`."""
    blocks, got = getattr(encoder, name), []
    hook = blocks[-2].register_forward_hook(lambda _m, _i, out: got.append(out[0] if isinstance(out, tuple) else out))
    if not run_last_block:
        setattr(encoder, name, blocks[:-1])
    try:
        model(pixel_values=pixel_values)
    finally:
        setattr(encoder, name, blocks)
        hook.remove()
    return got[-1]


class FusedMLPProjector(nn.Module):
    """Linear(d, 4d) GELU Linear(4d, llm) GELU Linear(llm, llm), as `projector.projector.{0,2,4}`."""

    def __init__(self, vision_dim: int, llm_dim: int):
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(vision_dim, 4 * vision_dim), nn.GELU(),
                                       nn.Linear(4 * vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))

    def forward(self, x):
        return self.projector(x)
