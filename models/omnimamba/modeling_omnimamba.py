"""OmniMamba (hustvl/OmniMamba, arXiv 2503.08686): one Mamba-2 stack that understands images (MMU) and
draws them (T2I).

Layout and parameter names follow upstream's `OmniMamba` module, so its checkpoint loads key for key:
- `vision_backbone` (DINOv2 + SigLIP, see vision.py) and `projector` feed 729 image features to MMU.
- `llm_backbone.vqvae`: LlamaGen VQ-16 (vq.py), codes -> 256 px images.
- `llm_backbone.mamba.backbone`: 48 Mamba-2 blocks (d_model 2048, d_state 128, headdim 64, expand 2,
  no MLP), pre-norm RMSNorm with the residual kept in fp32; every block's `mixer.in_proj` carries two
  rank-8 LoRA branches (`mmu_lora_A0/B0`, `t2i_lora_A0/B0`, alpha 32), of which the call's task picks one.
  Decoupled vocabularies: text `embedding` (tied to `lm_head`) with learned `mmu_pos_embed` (1500
  positions) added at every step; image `img_embeddings` (code table + fused-MLP `project_in`, table
  tied to `img_head`) with learned `pos_embed`; the caption is embedded by the text table then
  `caption_embed.cap_proj`.

Inference state is explicit (`DecodeState`): per layer the causal-conv window and the SSM state, plus
each sample's next position. The same modules run two ways: on CUDA with Triton kernels (mamba-ssm's
chunked SSD scan and fused residual RMSNorm for prefill; fused.py's three kernels a layer for decode
steps) and decode steps replayed from CUDA graphs; elsewhere in plain PyTorch (ssd.py), computing the
same function.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from omnibench.models.common.graphs import GraphPool
from omnibench.models.common.timm_names import dino_layout, hf_to_timm, timm_to_hf

from . import fused, persistent
from .fused import fused_available
from .ssd import conv_update_triton, kernels, ssd_chunked, ssd_step, use_kernels

from .vision import DinoSigLIPBackbone, FusedMLPProjector, VisionConfig
from .vq import VQConfig, VQModel

Route = Literal["mmu", "t2i"]
SPECIAL_TOKENS = ("<|soi|>", "<|eoi|>", "<|sot|>", "<|eot|>", "<|t2i|>", "<|mmu|>", "<|soc|>", "<|eoc|>", "<|lvg|>")


@dataclass
class OmniMambaConfig:
    d_model: int = 2048
    n_layer: int = 48
    vocab_size: int = 50288  # gpt-neox-20b (50277) + [PAD] + 9 task tokens, padded to a multiple of 16
    image_vocab_size: int = 16384
    num_image_tokens: int = 256
    caption_len: int = 68  # captions are left-padded / cut to this many tokens
    mmu_positions: int = 1500
    # Mamba-2 mixer (mamba-ssm's ssm_cfg of state-spaces/mamba2-1.3b)
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2  # d_inner = 4096
    headdim: int = 64  # 64 heads
    ngroups: int = 1
    chunk_size: int = 256
    # one LoRA branch per route on every in_proj
    lora_r: int = 8
    lora_alpha: int = 32
    norm_eps: float = 1e-5
    vision: VisionConfig = field(default_factory=VisionConfig)
    vq: VQConfig = field(default_factory=VQConfig)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "OmniMambaConfig":
        d = dict(d)
        vision = VisionConfig(**d.pop("vision", {}))
        vq = d.pop("vq", {})
        vq = VQConfig(**{**vq, "ch_mult": tuple(vq.get("ch_mult", VQConfig.ch_mult))})
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known}, vision=vision, vq=vq)


# --- norms ----------------------------------------------------------------------------------------
def wide(t: torch.Tensor) -> torch.Tensor:
    """fp32 for half types, fp64 stays fp64 (the plain path's accumulations follow the kernels')."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = wide(x)
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * wide(weight)


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.allow_kernels = True  # OmniMamba.set_kernels(False) forces the plain-PyTorch path

    def fast(self, x: torch.Tensor) -> bool:
        return self.allow_kernels and use_kernels(x.device)


class GatedRMSNorm(RMSNorm):
    """mamba-ssm's RMSNormGated with norm_before_gate=False: rmsnorm(y * silu(z)) * weight."""

    def __init__(self, d: int, eps: float, groups: int):
        super().__init__(d, eps)
        self.group_size = d // groups

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.fast(y):
            return kernels().gated_rms_norm(y, self.weight, None, z=z, eps=self.eps, group_size=self.group_size,
                                            norm_before_gate=False)
        g = (wide(y) * F.silu(wide(z))).unflatten(-1, (-1, self.group_size))
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return (g.flatten(-2) * wide(self.weight)).to(y.dtype)


def add_rms_norm(x, residual, norm: RMSNorm, prenorm: bool):
    """residual' = x + residual (fp32); returns (rmsnorm(residual') in x's dtype, residual')."""
    if norm.fast(x):
        out = kernels().add_rms_norm(x, norm.weight, None, residual=residual, prenorm=prenorm,
                                     residual_in_fp32=True, eps=norm.eps, is_rms_norm=True)
        return out if prenorm else (out, None)
    residual = wide(x) if residual is None else wide(x) + residual
    return rms_norm(residual, norm.weight, norm.eps).to(x.dtype), residual


def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """silu(depthwise causal conv) of x (b, l, c), weight (c, 1, k), computed in fp32 and rounded once to
    x's dtype as causal-conv1d does; in chunks of the sequence so that a 100k-token prefill does not hold
    fp32 copies of the whole activation."""
    k = weight.shape[-1]
    xt = x.transpose(1, 2)
    out = torch.empty_like(xt)
    w, b = wide(weight), wide(bias)
    for start in range(0, xt.shape[-1], chunk):
        lo = max(0, start - (k - 1))  # the k-1 inputs before the chunk, zeros before the sequence
        seg = F.pad(wide(xt[..., lo:start + chunk]), (k - 1 - (start - lo), 0))
        out[..., start:start + chunk] = F.silu(F.conv1d(seg, w, b, groups=xt.shape[1])).to(out.dtype)
    return out.transpose(1, 2)


# --- LoRA input projection -----------------------------------------------------------------------
class DerivedCache(nn.Module):
    """A module holding `derived` tensors drops them whenever .to() / .cuda() / .half() replaces its
    parameters: `derived` keys a cache by each source's address and version, and a new parameter can be
    allocated at the address a freed one had, with the same version (the caching allocator reuses freed
    blocks: a dtype round trip can give a layer's new weights its old weights' addresses)."""

    def _apply(self, fn, *args, **kwargs):
        self.__dict__.pop("_derived", None)
        return super()._apply(fn, *args, **kwargs)


class LoRALinear(DerivedCache, nn.Linear):
    """The frozen in_proj plus one rank-r branch per task; `route` picks the branch (never both)."""

    def __init__(self, d_in: int, d_out: int, r: int, alpha: int):
        super().__init__(d_in, d_out, bias=False)
        self.scaling = alpha / r
        for route in ("mmu", "t2i"):
            setattr(self, f"{route}_lora_A0", nn.Linear(d_in, r, bias=False))
            setattr(self, f"{route}_lora_B0", nn.Linear(r, d_out, bias=False))

    def forward(self, x: torch.Tensor, route: Route) -> torch.Tensor:
        a, b = getattr(self, f"{route}_lora_A0"), getattr(self, f"{route}_lora_B0")
        return F.linear(x, self.weight) + b(a(x)) * self.scaling

    def merged(self, route: Route) -> torch.Tensor:
        """W + scaling * B A for one route, for decode steps (one GEMV instead of three)."""
        a, b = getattr(self, f"{route}_lora_A0").weight, getattr(self, f"{route}_lora_B0").weight
        return derived(self, route, (self.weight, a, b),
                       lambda: (wide(self.weight) + self.scaling * (wide(b) @ wide(a))).to(self.weight.dtype))


def derived(module: nn.Module, name: str, sources: tuple[torch.Tensor, ...], compute) -> torch.Tensor:
    """A tensor computed from parameters once and reused by decode steps (so a CUDA-graph step does not
    recompute it), recomputed when any source is replaced or changed in place."""
    key = tuple((t.data_ptr(), t._version) for t in sources)
    cache = module.__dict__.setdefault("_derived", {})
    if name not in cache or cache[name][0] != key:
        # A plain tensor without history, whether first asked for under inference_mode or not, so that
        # calls in either mode can use it.
        with torch.inference_mode(False), torch.no_grad():
            cache[name] = (key, compute())
    return cache[name][1]


# --- Mamba-2 mixer ---------------------------------------------------------------------------------
class Mamba2Mixer(DerivedCache):
    """mamba-ssm's `Mamba2` (d_ssm = d_inner, rmsnorm gate, no bias, conv bias) with names kept."""

    def __init__(self, cfg: OmniMambaConfig):
        super().__init__()
        self.cfg = cfg
        di, g, n, h = cfg.d_inner, cfg.ngroups, cfg.d_state, cfg.nheads
        self.conv_dim = di + 2 * g * n
        self.in_proj = LoRALinear(cfg.d_model, 2 * di + 2 * g * n + h, cfg.lora_r, cfg.lora_alpha)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim,
                                padding=cfg.d_conv - 1)
        dt = torch.exp(torch.rand(h) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                       + torch.log(torch.tensor(1e-3))).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(h).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(h))
        self.norm = GatedRMSNorm(di, 1e-5, g)
        self.out_proj = nn.Linear(di, cfg.d_model, bias=False)
        self.allow_kernels = True
        self.merge_lora = False  # OmniMamba.set_merged_lora

    def _split(self, zxbcdt):
        di = self.cfg.d_inner
        return torch.split(zxbcdt, [di, self.conv_dim, self.cfg.nheads], dim=-1)

    def _xbc(self, xbc):
        di, gn = self.cfg.d_inner, self.cfg.ngroups * self.cfg.d_state
        x, B, C = torch.split(xbc, [di, gn, gn], dim=-1)
        g = self.cfg.ngroups
        return (x.unflatten(-1, (self.cfg.nheads, self.cfg.headdim)), B.unflatten(-1, (g, -1)),
                C.unflatten(-1, (g, -1)))

    def forward(self, u: torch.Tensor, route: Route, conv_state=None, ssm_state=None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Whole sequences from a zero state; writes the final states into conv_state / ssm_state if given.
        `lengths` (b,): right-padded rows, each read to its own length. Outputs before a row's length do not
        see its padding (causal); the states are those after its last real position: the conv window is
        gathered there, and the padding's dt is zero, so the SSM state passes through it unchanged
        (exp(A*0) = 1, dt*B*x = 0)."""
        b, l, _ = u.shape
        # merge_lora: one GEMM on W + s B A (as decode steps use) instead of W, then A and B, scaled, added
        zxbcdt = F.linear(u, self.in_proj.merged(route)) if self.merge_lora else self.in_proj(u, route)
        z, xbc, dt = self._split(zxbcdt)
        fast = self.allow_kernels and use_kernels(u.device)
        d_conv = self.cfg.d_conv
        if conv_state is not None and lengths is None:  # the last d_conv inputs (zero-padded on the left)
            conv_state.copy_(F.pad(xbc.transpose(1, 2), (d_conv - l, 0)))
        elif conv_state is not None:
            at = lengths[:, None] - d_conv + torch.arange(d_conv, device=u.device)
            window = xbc.gather(1, at.clamp(min=0)[..., None].expand(-1, -1, xbc.shape[-1]))
            conv_state.copy_((window * (at >= 0)[..., None]).transpose(1, 2))
        weight = self.conv1d.weight.squeeze(1)
        if fast and kernels().conv1d_fn is not None:
            xbc = kernels().conv1d_fn(xbc.transpose(1, 2), weight, self.conv1d.bias, activation="silu").transpose(1, 2)
        else:
            xbc = causal_conv1d_silu(xbc, self.conv1d.weight, self.conv1d.bias)
        x, B, C = self._xbc(xbc)
        A = -torch.exp(wide(self.A_log))
        dtp = None
        if lengths is not None or not fast:
            dtp = F.softplus(wide(dt) + wide(self.dt_bias))
            if lengths is not None:
                dtp = dtp * (torch.arange(l, device=u.device)[None, :] < lengths[:, None])[..., None]
        if fast and dtp is None:
            y, final = kernels().chunk_scan(x, dt, A, B, C, self.cfg.chunk_size, D=self.D, dt_bias=self.dt_bias,
                                            dt_softplus=True, return_final_states=True)
        elif fast:
            y, final = kernels().chunk_scan(x, dtp, A, B, C, self.cfg.chunk_size, D=self.D,
                                            return_final_states=True)
        else:
            y, final = ssd_chunked(x, dtp, A, B, C, self.D, self.cfg.chunk_size)
            y = y.to(u.dtype)
        if ssm_state is not None:
            ssm_state.copy_(final)
        return self.out_proj(self.norm(y.flatten(-2), z))

    def A_fp32(self) -> torch.Tensor:
        """A = -exp(A_log) in fp32, as the decode kernels take it (computed once, see `derived`)."""
        return derived(self, "A", (self.A_log,), lambda: -torch.exp(self.A_log.float()))

    def step(self, x: torch.Tensor, residual: torch.Tensor | None, norm: RMSNorm, route: Route, conv_state,
             ssm_state, fuse: bool = True, fold_conv: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per sample through the block: pre-norm (x + residual) then the mixer; x (b, d).
        Updates both states in place; returns the mixer output and the fp32 residual. Both paths use the
        route's merged in_proj. With `fuse`, where Triton kernels run (fused.py): small batches run the
        norms inside the two GEMVs and, with `fold_conv`, the conv update inside the in_proj GEMV (three
        kernels: in_proj, state update, out_proj); with `fold_conv`, every batch takes fused.py's state
        update. `fold_conv=False` is the previous four-kernel step (separate conv, mamba-ssm's state
        update), kept to measure against."""
        fast = self.allow_kernels and use_kernels(x.device)  # mamba-ssm's kernels
        fuse = fuse and self.allow_kernels and fused.kernels_run_on(x.device)
        own = fuse and fold_conv  # fused.py's state update, and its conv epilogue where the GEMV runs
        w_in = self.in_proj.merged(route)
        weight = self.conv1d.weight.squeeze(1)
        folded = own and fused_available(x, residual)
        if fuse and fused_available(x, residual):
            conv = (conv_state, weight, self.conv1d.bias, self.cfg.d_inner) if folded else None
            zxbcdt, residual = fused.norm_linear(x, residual, norm.weight, norm.eps, w_in, conv=conv)
        else:
            h, residual = add_rms_norm(x, residual, norm, prenorm=True)
            zxbcdt = F.linear(h, w_in)
        z, xbc, dt = self._split(zxbcdt)
        if not folded and (fast or own):
            xbc = (kernels().conv1d_update if fast else conv_update_triton)(xbc, conv_state, weight,
                                                                             self.conv1d.bias, "silu")
        elif not folded:
            conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
            conv_state[:, :, -1] = xbc
            xbc = F.silu((wide(conv_state) * wide(weight)).sum(-1) + wide(self.conv1d.bias)).to(x.dtype)
        xs, B, C = self._xbc(xbc)
        if own or fast:
            A = self.A_fp32()
            if own:
                y = fused.state_update(ssm_state, xs, dt, A, B, C, self.D, self.dt_bias)
            else:
                p, n = self.cfg.headdim, self.cfg.d_state
                y = kernels().state_update(
                    ssm_state, xs, dt[..., None].expand(-1, -1, p), A[:, None, None].expand(-1, p, n), B, C,
                    self.D[:, None].expand(-1, p), dt_bias=self.dt_bias[:, None].expand(-1, p), dt_softplus=True)
        else:
            dtp = F.softplus(wide(dt) + wide(self.dt_bias))
            y = ssd_step(ssm_state, xs, dtp, -torch.exp(wide(self.A_log)), B, C, self.D)
        y = y.flatten(-2)
        if fuse and self.norm.group_size == y.shape[-1] and fused_available(y, z):
            return fused.gated_norm_linear(y, z, self.norm.weight, self.norm.eps, self.out_proj.weight), residual
        return self.out_proj(self.norm(y, z)), residual


class Block(nn.Module):
    def __init__(self, cfg: OmniMambaConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = Mamba2Mixer(cfg)


# --- embeddings and the language model ------------------------------------------------------------
class ImageEmbeddings(nn.Module):
    """Upstream's GPT2Embeddings(word_embed_proj_dim=d_model, no positions): code table then an MLP."""

    def __init__(self, vocab: int, d: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, d)
        self.project_in = FusedMLPProjector(d, d)

    def forward(self, ids):
        return self.project_in(self.word_embeddings(ids))


class CaptionMLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.fc1 = nn.Linear(d, d, bias=False)
        self.fc2 = nn.Linear(d, d, bias=False)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CaptionEmbedder(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.cap_proj = CaptionMLP(d)

    def forward(self, x):
        return self.cap_proj(x)


class MixerModel(nn.Module):
    def __init__(self, cfg: OmniMambaConfig):
        super().__init__()
        d = cfg.d_model
        self.img_embeddings = ImageEmbeddings(cfg.image_vocab_size, d)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.num_image_tokens + 73, d) * 0.02)
        self.caption_embed = CaptionEmbedder(d)
        self.mmu_pos_embed = nn.Parameter(torch.randn(1, cfg.mmu_positions, d) * 0.02)
        self.embedding = nn.Embedding(cfg.vocab_size, d)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(d, cfg.norm_eps)

    def position(self, route: Route, pos: torch.Tensor) -> torch.Tensor:
        """Learned position rows; positions past the table reuse its last row (upstream would fail)."""
        table = self.mmu_pos_embed if route == "mmu" else self.pos_embed
        return table[0, pos.clamp(max=table.shape[1] - 1)]


class MambaLMHeadModel(nn.Module):
    def __init__(self, cfg: OmniMambaConfig):
        super().__init__()
        self.backbone = MixerModel(cfg)
        self.img_head = nn.Linear(cfg.d_model, cfg.image_vocab_size, bias=False)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self):
        self.img_head.weight = self.backbone.img_embeddings.word_embeddings.weight
        self.lm_head.weight = self.backbone.embedding.weight


class LLMBackbone(nn.Module):
    def __init__(self, cfg: OmniMambaConfig):
        super().__init__()
        self.vqvae = VQModel(cfg.vq)
        self.mamba = MambaLMHeadModel(cfg)


@dataclass
class DecodeState:
    """Recurrent state of a batch: per layer the conv window (b, conv_dim, d_conv, model dtype) and the
    SSM state (b, nheads, headdim, d_state) in `OmniMamba.ssm_state_dtype`: "model" (default) the model's
    dtype, as upstream's `allocate_inference_cache`, or "float32" (fp64 stays fp64). Every path computes
    a step in fp32 and rounds the new state to its dtype. In bf16 an fp32 state reads and writes 4.2 MB
    a layer per step instead of 2.1 MB (beside 52 MB of weights; with mamba-ssm's state update it cost
    ~1.5% of decode time on an H100) and takes the state's rounding out of the comparison of the kernel
    and PyTorch paths. `position` (b,) is each sample's next position."""

    conv: list[torch.Tensor]
    ssm: list[torch.Tensor]
    position: torch.Tensor
    route: Route
    logits: torch.Tensor | None = None  # the prefill's last logits, where a caller wants them kept

    def tensors(self) -> list[torch.Tensor]:
        return [*self.conv, *self.ssm, self.position]


class OmniMamba(nn.Module):
    def __init__(self, cfg: OmniMambaConfig):
        super().__init__()
        self.config = cfg
        self.vision_backbone = DinoSigLIPBackbone(cfg.vision)
        self.projector = FusedMLPProjector(cfg.vision.embed_dim, cfg.d_model)
        self.llm_backbone = LLMBackbone(cfg)
        self._graphs: dict[tuple, Any] = {}  # decode steps by (route, batch); vision, T2I prefill by shape
        self._graph_pool = None
        self.use_cuda_graphs = True
        self.use_fused_decode = True  # fused.py's decode kernels (see Mamba2Mixer.step)
        self.fold_conv = True  # with use_fused_decode: 3 kernels a layer; False: the previous 4-kernel step
        # with use_fused_decode and fold_conv, batch 1: every layer in one persistent kernel (persistent.py)
        self.persistent_decode = False
        self._stack = persistent.Stack()
        self.ssm_state_dtype: Literal["model", "float32"] = "model"  # see DecodeState

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() / .half() replace the parameters that captured graphs read: drop the graphs
        # (and their pool, which may be on another device now).
        self._graphs.clear()
        self._graph_pool = None
        return super()._apply(fn, *args, **kwargs)

    def set_kernels(self, enabled: bool) -> None:
        """Use mamba-ssm's kernels where available (default), or the plain-PyTorch path everywhere."""
        for mod in self.modules():
            if hasattr(mod, "allow_kernels"):
                mod.allow_kernels = enabled
        self.use_cuda_graphs = enabled

    def set_merged_lora(self, enabled: bool) -> None:
        """Whole-sequence passes (prefill) read in_proj with the route's LoRA merged into its weight, one
        GEMM, as decode steps always do; off: the frozen weight and the LoRA branch apart, as upstream's
        forward (in bf16 the two round differently; in fp32 they agree to ~1e-6)."""
        for layer in self.lm.backbone.layers:
            layer.mixer.merge_lora = enabled
        self._graphs.clear()  # a captured T2I prefill replays the path it was recorded with

    @property
    def lm(self) -> MambaLMHeadModel:
        return self.llm_backbone.mamba

    # -- embeddings --
    def text_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.backbone.embedding(ids)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(b, 729, d_model) understanding features of preprocessed (resized uint8) images. With CUDA graphs
        on (and the kernels available), the two towers and the projector replay one graph per batch shape:
        their ~1,000 small launches are the host's work, not the device's."""
        pixels = pixels.to(self.lm.backbone.embedding.weight.device, non_blocking=True)
        if not (self.use_cuda_graphs and use_kernels(pixels.device)):
            return self._image_features(pixels)
        key = ("vision", tuple(pixels.shape))
        if key not in self._graphs:
            static = torch.zeros_like(pixels)
            graph, out = self.graph_pool.capture(lambda: self._image_features(static),
                                                 lambda: self._image_features(static), pixels.device)
            self._graphs[key] = (static, graph, out)
        static, graph, out = self._graphs[key]
        static.copy_(pixels)
        graph.replay()
        return out.clone()

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = self.vision_backbone(pixels)
        return self.projector(feats.to(self.projector.projector[0].weight.dtype))

    def caption_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """T2I prompt ids -> input embeddings (caption MLP over the text table, plus positions)."""
        x = self.lm.backbone.caption_embed(self.text_embeddings(ids))
        return x + self.lm.backbone.pos_embed[:, : x.shape[1]]

    def with_mmu_positions(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[1], device=x.device)
        return x + self.lm.backbone.position("mmu", pos)

    def token_embeddings(self, token: torch.Tensor, position: torch.Tensor, route: Route) -> torch.Tensor:
        bb = self.lm.backbone
        x = bb.embedding(token) if route == "mmu" else bb.img_embeddings(token)
        return x + bb.position(route, position)

    def head(self, route: Route) -> nn.Linear:
        return self.lm.lm_head if route == "mmu" else self.lm.img_head

    def logits(self, hidden: torch.Tensor, route: Route) -> torch.Tensor:
        return wide(self.head(route)(hidden))

    # -- the stack --
    def forward(self, embeds: torch.Tensor, route: Route, state: DecodeState | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm hidden states (b, l, d) of a whole sequence from a zero state (prefill / training
        shape); fills `state` with the recurrent state after the last position (of each row's `lengths`,
        for right-padded rows) if given."""
        x, residual = embeds.to(self._dtype()), None
        for i, layer in enumerate(self.lm.backbone.layers):
            h, residual = add_rms_norm(x, residual, layer.norm, prenorm=True)
            states = (state.conv[i], state.ssm[i]) if state is not None else (None, None)
            x = layer.mixer(h, route, *states, lengths=lengths)
        return add_rms_norm(x, residual, self.lm.backbone.norm_f, prenorm=False)[0]

    def _dtype(self) -> torch.dtype:
        return self.lm.backbone.embedding.weight.dtype

    def new_state(self, batch: int, route: Route, position: torch.Tensor | int = 0) -> DecodeState:
        cfg, dev = self.config, self.lm.backbone.embedding.weight.device
        conv = [torch.zeros(batch, cfg.d_inner + 2 * cfg.ngroups * cfg.d_state, cfg.d_conv, device=dev,
                            dtype=self._dtype()) for _ in range(cfg.n_layer)]
        state_dtype = (self._dtype() if self.ssm_state_dtype == "model"
                       else torch.promote_types(self._dtype(), torch.float32))
        ssm = [torch.zeros(batch, cfg.nheads, cfg.headdim, cfg.d_state, device=dev, dtype=state_dtype)
               for _ in range(cfg.n_layer)]
        pos = torch.as_tensor(position, device=dev, dtype=torch.long).expand(batch).clone()
        return DecodeState(conv, ssm, pos, route)

    @torch.inference_mode()
    def prefill(self, embeds: torch.Tensor, route: Route,
                lengths: torch.Tensor | None = None) -> tuple[DecodeState, torch.Tensor]:
        """Read a batch of prompts once; returns the state and each row's last logits. Rows of different
        lengths come right-padded with their `lengths` (b,) (see Mamba2Mixer.forward)."""
        if lengths is None and route == "t2i" and self.use_cuda_graphs and use_kernels(embeds.device):
            return self._graphed_prefill(embeds, route)
        if lengths is None:
            state = self.new_state(embeds.shape[0], route, embeds.shape[1])
            return state, self.logits(self(embeds, route, state)[:, -1], route)
        lengths = lengths.to(embeds.device)
        state = self.new_state(embeds.shape[0], route, lengths)
        hidden = self(embeds, route, state, lengths)
        return state, self.logits(hidden[torch.arange(len(lengths), device=embeds.device), lengths - 1], route)

    def _graphed_prefill(self, embeds: torch.Tensor, route: Route) -> tuple[DecodeState, torch.Tensor]:
        """The text-to-image caption prefill (always caption_len + 4 tokens; a handful of shapes) replayed
        from a CUDA graph per shape: at that length its ~1,000 launches (the chunked scan's Triton kernels
        among them) take the host ~70 ms on an H200, the device a few. The same kernels on the same
        shapes: the same numbers. Returns a copy of the state (the graph's own buffers are overwritten by
        the next replay)."""
        key = ("prefill", route, tuple(embeds.shape), embeds.dtype)
        if key not in self._graphs:
            static_embeds = torch.zeros_like(embeds)
            static = self.new_state(embeds.shape[0], route, embeds.shape[1])

            def run() -> torch.Tensor:
                return self.logits(self(static_embeds, route, static)[:, -1], route)
            graph, out = self.graph_pool.capture(run, run, embeds.device)
            self._graphs[key] = (static_embeds, static, graph, out)
        static_embeds, static, graph, out = self._graphs[key]
        static_embeds.copy_(embeds)
        graph.replay()
        state = DecodeState([t.clone() for t in static.conv], [t.clone() for t in static.ssm], static.position.clone(),
                            route)
        return state, out.clone()

    def _step(self, state: DecodeState, token: torch.Tensor) -> torch.Tensor:
        x = self.token_embeddings(token, state.position, state.route).to(self._dtype())
        residual = None
        if self._persistent_runs(state, x):
            x, residual = self._persistent_layers(state, x)
        else:
            for i, layer in enumerate(self.lm.backbone.layers):
                x, residual = layer.mixer.step(x, residual, layer.norm, state.route, state.conv[i], state.ssm[i],
                                               self.use_fused_decode, self.fold_conv)
        norm_f, head = self.lm.backbone.norm_f, self.head(state.route)
        if self.use_fused_decode and norm_f.allow_kernels and fused_available(x, residual):  # norm inside the head GEMV
            logits = wide(fused.norm_linear(x, residual, norm_f.weight, norm_f.eps, head.weight)[0])
        else:
            logits = self.logits(add_rms_norm(x, residual, norm_f, prenorm=False)[0], state.route)
        state.position.add_(1)  # after the head, which may then overlap the last out_proj (PDL)
        return logits

    def _persistent_runs(self, state: DecodeState, x: torch.Tensor) -> bool:
        """Whether this step's layers run as persistent.py's one kernel: asked for (persistent_decode with
        the fused three-kernel step), batch 1 where Triton kernels run, kernels allowed in every layer,
        one gated-norm group, dense states."""
        cfg = self.config
        return (self.persistent_decode and self.use_fused_decode and self.fold_conv and x.shape[0] == 1
                and fused.kernels_run_on(x.device) and x.is_contiguous()
                and all(layer.mixer.allow_kernels and layer.norm.allow_kernels for layer in self.lm.backbone.layers)
                and self.lm.backbone.layers[0].mixer.norm.group_size == cfg.d_inner
                and all(t.is_contiguous() for t in state.conv + state.ssm))

    def _persistent_layers(self, state: DecodeState, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layers = []
        for i, layer in enumerate(self.lm.backbone.layers):
            m = layer.mixer
            layers.append((m.in_proj.merged(state.route), layer.norm.weight, m.conv1d.weight.squeeze(1), m.conv1d.bias,
                           m.A_fp32(), m.D, m.dt_bias, m.norm.weight, m.out_proj.weight, state.conv[i], state.ssm[i]))
        first = self.lm.backbone.layers[0]
        cfg = self.config
        return persistent.layers_step(self._stack, x, layers, d_inner=cfg.d_inner, nheads=cfg.nheads,
                                      headdim=cfg.headdim, d_state=cfg.d_state, ngroups=cfg.ngroups,
                                      eps_in=first.norm.eps, eps_gate=first.mixer.norm.eps)

    @property
    def graph_pool(self) -> GraphPool:
        """The memory pool every decode graph of this model (each route and batch size) records into."""
        if self._graph_pool is None:
            self._graph_pool = GraphPool()
        return self._graph_pool

    @torch.inference_mode()
    def step(self, state: DecodeState, token: torch.Tensor) -> torch.Tensor:
        """Feed one token per sample (b,) at its position; advances the state, returns logits (b, V)."""
        if not (self.use_cuda_graphs and use_kernels(token.device)):
            return self._step(state, token)
        key = (state.route, token.shape[0])
        if key not in self._graphs:
            self._graphs[key] = _GraphedStep(self, state.route, token.shape[0])
        return self._graphs[key](state, token)


class _GraphedStep:
    """One decode step captured in a CUDA graph over static state buffers. A state is bound by copying
    it into the buffers and then pointing it at them; the state bound before is detached first with a
    copy of the buffers, so any number of live states stay correct."""

    def __init__(self, model: OmniMamba, route: Route, batch: int):
        self.static = model.new_state(batch, route)
        self.token = torch.zeros(batch, dtype=torch.long, device=self.static.position.device)
        self.bound: DecodeState | None = None
        # Warm-up steps on the static state (it is overwritten when a state is bound) compile and
        # autotune the Triton kernels outside the recording.
        step = functools.partial(model._step, self.static, self.token)
        self.graph, self.out = model.graph_pool.capture(step, step, self.token.device)

    def __call__(self, state: DecodeState, token: torch.Tensor) -> torch.Tensor:
        if self.bound is not state:
            if self.bound is not None:
                self.bound.conv, self.bound.ssm = [t.clone() for t in self.bound.conv], [t.clone() for t in self.bound.ssm]
                self.bound.position = self.bound.position.clone()
            for dst, src in zip(self.static.tensors(), state.tensors()):
                dst.copy_(src)
            state.conv, state.ssm, state.position = self.static.conv, self.static.ssm, self.static.position
            self.bound = state
        self.token.copy_(token)
        self.graph.replay()
        return self.out.clone()


# --- checkpoint names -----------------------------------------------------------------------------
_TOWERS = {"vision_backbone.dino_featurizer.": ("dino", "dino_layers"),
           "vision_backbone.siglip_featurizer.": ("siglip", "siglip_layers")}


def _split_tower(sd: dict, prefix: str) -> tuple[dict, dict]:
    inside = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return inside, {k: v for k, v in sd.items() if not k.startswith(prefix)}


def official_state_dict(model: OmniMamba) -> dict[str, torch.Tensor]:
    """The model's weights under upstream's names (timm names for the vision towers)."""
    sd = model.state_dict()
    for prefix, (tower, n) in _TOWERS.items():
        inside, sd = _split_tower(sd, prefix)
        sd.update({prefix + k: v for k, v in hf_to_timm(inside, tower, getattr(model.config.vision, n)).items()})
    return sd


def load_official_state_dict(model: OmniMamba, sd: dict[str, torch.Tensor]) -> None:
    """Strict load of an upstream state dict; a missing, unexpected or misshapen key raises a
    ValueError that names it."""
    expected = official_state_dict(model)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} ({len(missing)} in all)")
        if unexpected:
            parts.append(f"unexpected key(s) {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)} in all)")
        raise ValueError("checkpoint does not match the OmniMamba architecture: " + "; ".join(parts))
    for key, val in expected.items():
        if tuple(sd[key].shape) != tuple(val.shape):
            raise ValueError(f"checkpoint key {key} has shape {tuple(sd[key].shape)}, the model expects {tuple(val.shape)}")
    ours = dict(sd)
    layout = dino_layout(model.state_dict())  # transformers' names for DINOv2's attention, by version
    for prefix, (tower, n) in _TOWERS.items():
        inside, ours = _split_tower(ours, prefix)
        ours.update({prefix + k: v for k, v in timm_to_hf(inside, tower, getattr(model.config.vision, n),
                                                           layout).items()})
    model.load_state_dict(ours, strict=True)
    model.lm.tie_weights()
