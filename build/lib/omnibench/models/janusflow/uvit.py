"""JanusFlow's generation encoder/decoder (deepseek-ai/Janus `janus/janusflow/models/uvit.py`): shallow
ConvNeXt U-ViT halves around the LLM, working on the SDXL-VAE latent (4 x 48 x 48 at 384 px).

Encoder: the timestep's sinusoidal embedding -> MLP (the LLM-width `t_emb`, also fed to the LLM as one
token), a strided conv to 24 x 24 x 768, two ConvNeXt blocks modulated by `t_emb`. Decoder: RMSNorm,
concat with the encoder's output (skip), two ConvNeXt blocks, a 1x1 conv + 2x pixel shuffle to the
latent's 4 channels. Names follow the checkpoint (`time_embed.linear_1`, `mid_block.res_blocks.0.depthwise`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm as RMSNorm


@dataclass
class GenConfig:
    latent_channels: int = 4
    latent_size: int = 48
    channels: int = 768  # block_out_channels[-1] of both halves
    kernel_size: int = 2  # encoder in_conv; not seen in a published config (see report)
    stride: int = 2
    padding: int | None = None  # None: upstream's default ceil(kernel_size - stride)
    layers_in_middle: int = 2
    upsamples: int = 1
    norm_eps: float = 1e-6

    @property
    def num_tokens(self) -> int:
        return (self.latent_size // self.stride) ** 2


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """diffusers `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)`: [cos, sin] of t times
    frequencies exp(-ln(max_period) i / (dim/2)), computed in fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbedding(nn.Module):
    """diffusers `TimestepEmbedding(in, out)`: linear_1, SiLU, linear_2."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.linear_1, self.linear_2 = nn.Linear(cin, cout), nn.Linear(cout, cout)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2 GRN over channels-last input."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.bias = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x):
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return torch.addcmul(self.bias, self.weight * nx + 1, x)


class ConvNextBlock(nn.Module):
    def __init__(self, channels: int, hidden_size: int, eps: float, ffn: int = 4):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = RMSNorm(channels, eps)
        self.channelwise_linear_1 = nn.Linear(channels, channels * ffn)
        self.channelwise_norm = GlobalResponseNorm(channels * ffn)
        self.channelwise_linear_2 = nn.Linear(channels * ffn, channels)
        self.cond_embeds_mapper = nn.Linear(hidden_size, channels * 2)

    def forward(self, x, cond):
        h = self.norm(self.depthwise(x).permute(0, 2, 3, 1))
        h = self.channelwise_linear_2(self.channelwise_norm(F.gelu(self.channelwise_linear_1(h))))
        x = x + h.permute(0, 3, 1, 2)
        scale, shift = self.cond_embeds_mapper(F.silu(cond)).chunk(2, dim=1)
        return torch.addcmul(shift[:, :, None, None], x, (1 + scale)[:, :, None, None])  # FiLM


class UVitBlock(nn.Module):
    """Only the residual ConvNeXt stack: JanusFlow's blocks neither down- nor upsample."""

    def __init__(self, channels: int, hidden_size: int, n: int, eps: float):
        super().__init__()
        self.res_blocks = nn.ModuleList(ConvNextBlock(channels, hidden_size, eps) for _ in range(n))

    def forward(self, x, cond):
        for block in self.res_blocks:
            x = block(x, cond)
        return x


def _channels_last_norm(norm: nn.Module, x):
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Unpatchify(nn.Module):
    def __init__(self, cin: int, cout: int, patch: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(cin, eps)
        self.unpatch_conv = nn.Conv2d(cin, cout * patch * patch, 1)
        self.pixel_shuffle = nn.PixelShuffle(patch)

    def forward(self, x):
        return self.pixel_shuffle(self.unpatch_conv(_channels_last_norm(self.norm, x)))


class ShallowUViTEncoder(nn.Module):
    def __init__(self, cfg: GenConfig, hidden_size: int):
        super().__init__()
        self.channels = cfg.channels
        self.time_embed = TimestepEmbedding(cfg.channels, hidden_size)
        padding = math.ceil(cfg.kernel_size - cfg.stride) if cfg.padding is None else cfg.padding
        self.in_conv = nn.Conv2d(cfg.latent_channels, cfg.channels, cfg.kernel_size, stride=cfg.stride, padding=padding)
        self.mid_block = UVitBlock(cfg.channels, hidden_size, cfg.layers_in_middle, cfg.norm_eps)

    def forward(self, x, t):
        """(B, 4, H, W) latent, (B,) timesteps in [0, 1000) -> (features (B, C, H/s, W/s), t_emb (B, D))."""
        t_emb = self.time_embed(timestep_embedding(t.flatten(), self.channels).to(x.dtype))
        return self.mid_block(self.in_conv(x), t_emb), t_emb


class ShallowUViTDecoder(nn.Module):
    def __init__(self, cfg: GenConfig, hidden_size: int):
        super().__init__()
        c = cfg.channels
        self.input_norm = RMSNorm(c, cfg.norm_eps)
        self.mid_block = UVitBlock(2 * c, hidden_size, cfg.layers_in_middle, cfg.norm_eps)
        self.out_convs = nn.ModuleList(
            Unpatchify(2 * c if i == 0 else c, cfg.latent_channels if i == cfg.upsamples - 1 else c, 2, cfg.norm_eps)
            for i in range(cfg.upsamples))

    def forward(self, x, skip, t_emb):
        x = torch.cat([_channels_last_norm(self.input_norm, x), skip], dim=1)
        x = self.mid_block(x, t_emb)
        for conv in self.out_convs:
            x = conv(x)
        return x
