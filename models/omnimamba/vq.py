"""LlamaGen's VQ-16 image tokenizer (FoundationVision/LlamaGen `tokenizer_image/vq_model.py`), the one
OmniMamba generates into: 16384 codes of dimension 8 (l2-normalised), 16x downsampling, so a 256 px
image is 16x16 = 256 tokens. Module names follow the checkpoint (`peizesun/llamagen_t2i`
`vq_ds16_t2i.pt`, and `llm_backbone.vqvae.*` inside OmniMamba's state dict). Only code -> image is
used at inference; the encoder is kept so that the state dict loads key for key."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from omnibench.models.common.vq_blocks import (AttnBlock, ResnetBlock, add_output_head, code_grid, output_head,
                                               resolution_levels, run_blocks, through_level, Tokenizer)


@dataclass
class VQConfig:
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    num_res_blocks: int = 2


class _Level(nn.Module):
    """One resolution: `res` blocks, `attn` blocks (lowest resolution only), then a resampler."""

    def __init__(self, cin: int, cout: int, n: int, attn: bool):
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout) for i in range(n))
        self.attn = nn.ModuleList(AttnBlock(cout) for _ in range(n)) if attn else nn.ModuleList()

    def blocks(self, h):
        for i, res in enumerate(self.res):
            h = res(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


def _mid(c: int) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)])


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        levels, cin = resolution_levels([ch * m for m in mult], ch, lambda i, cin, cout: _Level(
            cin, cout, cfg.num_res_blocks, attn=i == len(mult) - 1), down=True)
        self.conv_blocks = nn.ModuleList(levels)
        self.mid = _mid(cin)
        add_output_head(self, cin, cfg.z_channels)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = through_level(level, (level.blocks,), h)
        return output_head(self, run_blocks(self.mid, h))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        cin = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _mid(cin)
        # Lowest resolution first, with attention there (LlamaGen's decoder: num_res_blocks + 1 per level).
        levels, cin = resolution_levels([ch * m for m in reversed(mult)], cin, lambda i, cin, cout: _Level(
            cin, cout, cfg.num_res_blocks + 1, attn=i == 0), down=False)
        self.conv_blocks = nn.ModuleList(levels)
        add_output_head(self, cin, 3)

    def forward(self, z):
        h = run_blocks(self.mid, self.conv_in(z))
        for level in self.conv_blocks:
            h = through_level(level, (level.blocks,), h)
        return output_head(self, h)


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.codebook_embed_dim)
        # Training-time usage statistics; a persistent buffer in the checkpoint, unused here.
        self.register_buffer("codebook_used", torch.zeros(65536))

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """(b, side*side) code ids -> (b, dim, side, side) l2-normalised code vectors."""
        return code_grid(F.normalize(self.embedding.weight, p=2, dim=-1)[codes])


class VQModel(Tokenizer):
    def __init__(self, cfg: VQConfig):
        super().__init__(cfg, Encoder(cfg), Decoder(cfg), VectorQuantizer(cfg))
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)

    @torch.no_grad()
    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        """(b, n) codes, n a square -> images (b, 3, 16*sqrt(n), ...) in [-1, 1] (unclamped)."""
        z = self.quantize.codes_to_latents(codes).to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(z))
