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


@dataclass
class VQConfig:
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    num_res_blocks: int = 2


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        n = self.norm(x)
        q, k, v = (m(n).reshape(b, c, hh * ww).transpose(1, 2) for m in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v, one head
        return x + self.proj_out(h.transpose(1, 2).reshape(b, c, hh, ww))


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


class _Resample(nn.Module):
    def __init__(self, c: int, down: bool):
        super().__init__()
        self.down = down
        self.conv = nn.Conv2d(c, c, 3, stride=2 if down else 1, padding=0 if down else 1)

    def forward(self, x):
        if self.down:  # asymmetric padding, as in taming-transformers
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(c: int) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)])


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        cin = ch
        for i, m in enumerate(mult):
            level = _Level(cin, ch * m, cfg.num_res_blocks, attn=i == len(mult) - 1)
            if i != len(mult) - 1:
                level.downsample = _Resample(ch * m, down=True)
            self.conv_blocks.append(level)
            cin = ch * m
        self.mid = _mid(cin)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level.blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        cin = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _mid(cin)
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(len(mult))):
            level = _Level(cin, ch * mult[i], cfg.num_res_blocks + 1, attn=i == len(mult) - 1)
            if i != 0:
                level.upsample = _Resample(ch * mult[i], down=False)
            self.conv_blocks.append(level)
            cin = ch * mult[i]
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for level in self.conv_blocks:
            h = level.blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.codebook_embed_dim)
        # Training-time usage statistics; a persistent buffer in the checkpoint, unused here.
        self.register_buffer("codebook_used", torch.zeros(65536))

    def codes_to_latents(self, codes: torch.Tensor, side: int) -> torch.Tensor:
        """(b, side*side) code ids -> (b, dim, side, side) l2-normalised code vectors."""
        z = F.normalize(self.embedding.weight, p=2, dim=-1)[codes]
        return z.reshape(codes.shape[0], side, side, -1).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)

    @torch.no_grad()
    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        """(b, n) codes, n a square -> images (b, 3, 16*sqrt(n), ...) in [-1, 1] (unclamped)."""
        side = int(round(codes.shape[1] ** 0.5))
        z = self.quantize.codes_to_latents(codes, side).to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(z))
