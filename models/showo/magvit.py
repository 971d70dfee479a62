"""Show-o's image tokenizer, MAGVIT-v2 (`showlab/magvitv2`; upstream `models/modeling_magvitv2.py`):
a VQGAN-style encoder/decoder around a lookup-free quantizer. The encoder ends in 13 channels; each
position's code is the bit pattern of the signs of those channels (first channel = most significant
bit), so there are 2**13 = 8192 codes and the codebook entry of a code is its +-1 bit vector. 16x
downsampling: 256 px -> 16x16 = 256 tokens, 512 px -> 1024, raster order.

Module names follow the checkpoint (`encoder.down.0.block.0.norm1.weight`, `quantize.embedding`, ...).
The resnet, attention and resampling blocks are the same taming-transformers blocks OmniMamba's VQ uses."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from omnibench.models.common.vq_blocks import (AttnBlock, ResnetBlock, add_output_head, code_grid, output_head,
                                               resolution_levels, through_level, Tokenizer)


@dataclass
class MagvitConfig:
    ch: int = 128
    encoder_ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    encoder_blocks: tuple[int, ...] = (4, 3, 4, 3, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_blocks: tuple[int, ...] = (4, 4, 3, 4, 3)
    z_channels: int = 13

    @property
    def codebook_size(self) -> int:
        return 2 ** self.z_channels

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)


def _mid(c: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)
    return mid


def _run_mid(mid: nn.Module, h):
    return mid.block_2(mid.attn_1(mid.block_1(h)))


def _resnets(n: int):
    """A level of `n` ResnetBlocks (`block.<j>`), the first taking `cin` channels to `cout`."""
    def make(i: int, cin: int, cout: int) -> nn.Module:
        level = nn.Module()
        level.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout) for j in range(n(i)))
        return level
    return make


class Encoder(nn.Module):
    """No attention inside the levels: upstream's attn_resolutions=[5] never matches a resolution."""

    def __init__(self, cfg: MagvitConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.encoder_ch_mult
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        levels, cin = resolution_levels([ch * m for m in mult], ch, _resnets(lambda i: cfg.encoder_blocks[i]),
                                        down=True)
        self.down = nn.ModuleList(levels)
        self.mid = _mid(cin)
        add_output_head(self, cin, cfg.z_channels)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = through_level(level, level.block, h)
        return self.quant_conv(output_head(self, _run_mid(self.mid, h)))


class Decoder(nn.Module):
    def __init__(self, cfg: MagvitConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.decoder_ch_mult
        cin = ch * mult[-1]
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _mid(cin)
        top = len(mult) - 1  # levels run from the lowest resolution (index top) to up[0]
        levels, cin = resolution_levels([ch * m for m in reversed(mult)], cin,
                                        _resnets(lambda i: cfg.decoder_blocks[top - i]), down=False)
        self.up = nn.ModuleList(reversed(levels))  # up[0] is the highest resolution, run last
        add_output_head(self, cin, 3)

    def forward(self, z):
        h = _run_mid(self.mid, self.conv_in(self.post_quant_conv(z)))
        for level in reversed(self.up):
            h = through_level(level, level.block, h)
        return output_head(self, h)


class LFQuantizer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        bits = torch.arange(dim - 1, -1, -1)
        codes = torch.arange(2 ** dim)
        # Both are persistent buffers in the checkpoint: the +-1 codebook and the bit weights.
        self.register_buffer("embedding", ((codes[:, None] >> bits) & 1).float() * 2 - 1)
        self.register_buffer("power_vals", 2 ** bits)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(b, dim, h, w) encoder output -> (b, h*w) code ids."""
        return (self.power_vals.reshape(1, -1, 1, 1) * (z > 0).long()).sum(1).flatten(1)  # exact in any dtype

    def latents(self, codes: torch.Tensor) -> torch.Tensor:
        return code_grid(self.embedding[codes])


class MAGVITv2(Tokenizer):
    def __init__(self, cfg: MagvitConfig):
        super().__init__(cfg, Encoder(cfg), Decoder(cfg), LFQuantizer(cfg.z_channels))

    @torch.no_grad()
    def get_code(self, pixels: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) in [-1, 1] -> (b, H/16 * W/16) code ids in [0, 2**z)."""
        return self.quantize.codes(self.encoder(pixels.to(self.encoder.conv_in.weight.dtype)))

    @torch.no_grad()
    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        """(b, n) code ids, n a square -> (b, 3, 16 sqrt(n), ...) in about [-1, 1] (unclamped)."""
        z = self.quantize.latents(codes).to(self.decoder.conv_in.weight.dtype)
        return self.decoder(z)


def image_transform(img: Image.Image, resolution: int) -> torch.Tensor:
    """Upstream `training/utils.py::image_transform`: bicubic resize of the short side (torchvision's
    size rule: long side truncated), center crop, [0, 1] -> [-1, 1]."""
    img = img.convert("RGB")
    w, h = img.size
    if w <= h:
        size = (resolution, int(resolution * h / w))
    else:
        size = (int(resolution * w / h), resolution)
    img = img.resize(size, Image.BICUBIC)
    left = int(round((size[0] - resolution) / 2.0))
    top = int(round((size[1] - resolution) / 2.0))
    img = img.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return (torch.from_numpy(arr).permute(2, 0, 1) - 0.5) / 0.5


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Upstream's post-processing: (x + 1) / 2 clamped to [0, 1], times 255, truncated to uint8."""
    x = torch.clamp((images.float() + 1.0) / 2.0, 0.0, 1.0) * 255.0
    arr = x.permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]
