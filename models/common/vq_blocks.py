"""The convolutional building blocks that the VQ tokenizers of the field share (taming-transformers'
ResnetBlock and single-head AttnBlock with GroupNorm(32), and its strided / nearest-upsampling
resampler): LlamaGen's VQ-16 (OmniMamba) and MAGVIT-v2 (Show-o) are both made of them. Parameter names
follow the checkpoints (`norm1`, `conv1`, `nin_shortcut`, `q`, `k`, `v`, `proj_out`, `conv`)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = group_norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = group_norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        n = self.norm(x)
        q, k, v = (m(n).reshape(b, c, hh * ww).transpose(1, 2) for m in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v, one head
        return x + self.proj_out(h.transpose(1, 2).reshape(b, c, hh, ww))


class Resample(nn.Module):
    def __init__(self, c: int, down: bool):
        super().__init__()
        self.down = down
        self.conv = nn.Conv2d(c, c, 3, stride=2 if down else 1, padding=0 if down else 1)

    def forward(self, x):
        if self.down:  # asymmetric padding, as in taming-transformers
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Tokenizer(nn.Module):
    """An image tokenizer: `encoder`, `decoder` and `quantize` (the checkpoints' names) and its `config`."""

    def __init__(self, config, encoder: nn.Module, decoder: nn.Module, quantize: nn.Module):
        super().__init__()
        self.config, self.encoder, self.decoder, self.quantize = config, encoder, decoder, quantize


def resolution_levels(widths, cin: int, make_level, down: bool) -> tuple[list[nn.Module], int]:
    """The levels of an encoder (`down`) or a decoder in the order they run: level i takes `cin`
    channels to `widths[i]` (`make_level(i, cin, cout)` builds its blocks), then a resampler
    (`downsample` / `upsample`) follows every level but the last. Returns the levels and the width out."""
    levels = []
    for i, cout in enumerate(widths):
        level = make_level(i, cin, cout)
        if i != len(widths) - 1:
            setattr(level, "downsample" if down else "upsample", Resample(cout, down=down))
        levels.append(level)
        cin = cout
    return levels, cin


def add_output_head(module: nn.Module, cin: int, cout: int) -> None:
    """`norm_out` (GroupNorm) and `conv_out` (3x3 conv to `cout` channels), applied by `output_head`."""
    module.norm_out, module.conv_out = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)


def run_blocks(blocks, h):
    for block in blocks:
        h = block(h)
    return h


def through_level(level: nn.Module, blocks, h):
    """`h` through a resolution level's blocks, then through its resampler (`downsample` or `upsample`)
    when it has one (the last level of an encoder and of a decoder has none)."""
    h = run_blocks(blocks, h)
    resample = getattr(level, "downsample", None) or getattr(level, "upsample", None)
    return h if resample is None else resample(h)


def output_head(module: nn.Module, h):
    """How every encoder and decoder of these tokenizers ends: `conv_out(silu(norm_out(h)))`."""
    return module.conv_out(F.silu(module.norm_out(h)))


def code_grid(vectors):
    """(b, side*side, dim) code vectors in raster order -> the (b, dim, side, side) latent grid."""
    b, n, d = vectors.shape
    side = int(round(n ** 0.5))
    return vectors.reshape(b, side, side, d).permute(0, 3, 1, 2).contiguous()
