"""timm <-> transformers names of the ViT towers the families load from timm-named checkpoints (DINOv2
with registers, SigLIP): upstream OmniMamba and JanusFlow built them with timm, omnibench runs
transformers' modules, so state dicts are mapped key for key (the fused qkv split and joined)."""
from __future__ import annotations

import torch

# Per-block renames (timm suffix -> transformers suffix); the fused qkv is handled separately, and so is
# DINOv2's attention projection, whose name depends on the transformers version (DINO_LAYOUTS).
_DINO_BLOCK = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
# transformers 5.18 renamed DINOv2's attention: before it, `attention.attention.{query,key,value}` and
# `attention.output.dense`; since, `attention.{q,k,v}_proj` and `attention.o_proj`. layout -> (q, k, v
# names, output projection name).
DINO_LAYOUTS = {"proj": (("attention.q_proj", "attention.k_proj", "attention.v_proj"), "attention.o_proj"),
                "legacy": (("attention.attention.query", "attention.attention.key", "attention.attention.value"),
                           "attention.output.dense")}
_SIGLIP_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
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


def dino_layout(hf_keys) -> str:
    """Which of DINO_LAYOUTS transformers' DINOv2 keys (a state dict or its keys) are in."""
    legacy = DINO_LAYOUTS["legacy"][0][0] + ".weight"
    return "legacy" if any(k.endswith(legacy) for k in hf_keys) else "proj"


def _qkv_names(tower: str, layout: str) -> tuple[str, str, str]:
    return DINO_LAYOUTS[layout][0] if tower == "dino" else _SIGLIP_QKV


def _tower_names(tower: str, n_layers: int, layout: str) -> dict[str, str]:
    """timm key -> transformers key, for every key that is a plain rename."""
    dino = tower == "dino"
    names = dict(_DINO_TOP if dino else _SIGLIP_TOP)
    block, prefix = (_DINO_BLOCK, "encoder.layer") if dino else (_SIGLIP_BLOCK, "encoder.layers")
    if dino:
        block = {**block, "attn.proj": DINO_LAYOUTS[layout][1]}
    for i in range(n_layers):
        for src, dst in block.items():
            for leaf in ("weight", "bias"):
                names[f"blocks.{i}.{src}.{leaf}"] = f"{prefix}.{i}.{dst}.{leaf}"
        if dino:
            names[f"blocks.{i}.ls1.gamma"] = f"{prefix}.{i}.layer_scale1.lambda1"
            names[f"blocks.{i}.ls2.gamma"] = f"{prefix}.{i}.layer_scale2.lambda1"
    return names


def timm_to_hf(sd: dict[str, torch.Tensor], tower: str, n_layers: int, layout: str = "proj") -> dict[str, torch.Tensor]:
    """One tower's timm state dict (prefix stripped) -> transformers names, in `layout` (DINO_LAYOUTS: the
    model's own, `dino_layout(model.state_dict())`). Keys it does not know are passed through unchanged,
    so the strict load that follows names them."""
    names = _tower_names(tower, n_layers, layout)
    qkv = _qkv_names(tower, layout)
    layer = "encoder.layer" if tower == "dino" else "encoder.layers"
    out: dict[str, torch.Tensor] = {}
    for key, val in sd.items():
        parts = key.split(".")
        if key in names:
            out[names[key]] = val
        elif len(parts) == 5 and parts[0] == "blocks" and parts[2:4] == ["attn", "qkv"]:
            for name, chunk in zip(qkv, val.chunk(3, dim=0)):
                out[f"{layer}.{parts[1]}.{name}.{parts[4]}"] = chunk
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
    """The inverse of `timm_to_hf`, for writing checkpoints under upstream's names; `sd` in either layout."""
    layout = dino_layout(sd)
    back = {v: k for k, v in _tower_names(tower, n_layers, layout).items()}
    qkv = _qkv_names(tower, layout)
    layer = "encoder.layer" if tower == "dino" else "encoder.layers"
    out: dict[str, torch.Tensor] = {}
    for key, val in sd.items():
        if key in back:
            out[back[key]] = val
    for i in range(n_layers):
        for leaf in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat(
                [sd[f"{layer}.{i}.{name}.{leaf}"] for name in qkv], dim=0)
    if tower == "dino":
        out["pos_embed"] = sd["embeddings.position_embeddings"][:, 1:]
    else:
        out["pos_embed"] = sd["embeddings.position_embedding.weight"][None]
        width = sd["head.attention.out_proj.weight"].shape[0]
        for leaf in ("weight", "bias"):
            w = sd[f"head.attention.in_proj_{leaf}"]
            out[f"attn_pool.q.{leaf}"], out[f"attn_pool.kv.{leaf}"] = w[:width], w[width:]
    return out
