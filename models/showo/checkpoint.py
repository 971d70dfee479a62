"""Finding, loading and writing Show-o checkpoints, and the `tiny` preset.

Upstream loading reads three hub repositories; each may instead be a local folder:
- `showlab/show-o` (or `showlab/show-o-512x512`): `config.json` (vocab_size, llm_vocab_size,
  llm_model_path, codebook_size, num_vq_tokens, w_clip_vit) and the weights (`*.safetensors` or
  `pytorch_model.bin`), keys `showo.model.*` / `showo.lm_head.*`;
- its `llm_model_path`, `microsoft/phi-1_5`: the Phi sizes (`config.json`) and the tokenizer, to which
  upstream adds [PAD] and nine task tokens (so do we, so that the ids come out as upstream's);
- `showlab/magvitv2`: the MAGVIT-v2 weights (`encoder.*`, `decoder.*`, `quantize.*`).

`preset=full` (`random_full`) is the full-size architecture with random weights, for speed and memory
measurement only.

Weight files are found and read through models/common/checkpoint_io.py. The generic helpers here
(`byte_bpe_tokenizer`, `load_fast_tokenizer`, `random_init_`) are shared with models/janusflow.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path

import torch
import torch.nn as nn

from omnibench.models.common.checkpoint_io import (first_line, read_json, read_state_dict, require_files, resolve_checkpoint,
                                         strict_load)
from omnibench.models.common.checkpoint_io import load_fast_tokenizer
from omnibench.models.common.presets import byte_bpe_tokenizer, random_init_
from omnibench.protocol import OmnibenchError

from .magvit import MAGVITv2, MagvitConfig
from .modeling_showo import SPECIAL_TOKENS, Showo, ShowoConfig

# The checkpoint the OmniMamba paper's Table 1 compares against (its Show-o row: 512 px).
DEFAULT_SHOWO = "showlab/show-o-512x512"
DEFAULT_MAGVIT = "showlab/magvitv2"
TINY_SEED = 0
FULL_SEED = 0
WEIGHTS_NAME = "model.safetensors"


def save_weights(module: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / WEIGHTS_NAME))


# --- Show-o -----------------------------------------------------------------------------------------
def add_task_tokens(tokenizer):
    """Upstream's UniversalPrompting: [PAD] as pad token, then the task tokens as added tokens."""
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    tokenizer.add_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def load_tokenizer(folder: Path):
    return add_task_tokens(load_fast_tokenizer(folder, "Phi", padding_side="left"))


def from_pretrained(pretrained: str = DEFAULT_SHOWO, vq_model: str = DEFAULT_MAGVIT, llm: str | None = None):
    """(Show-o, MAGVIT-v2, tokenizer with task tokens), fp32 on CPU, strictly loaded."""
    folder = resolve_checkpoint(pretrained, "Show-o checkpoint")
    require_files(folder, "Show-o checkpoint")  # config.json and weights, before anything is read
    showo_cfg = read_json(folder / "config.json")
    if showo_cfg.get("w_clip_vit"):
        raise OmnibenchError(f"{pretrained} is a CLIP-ViT Show-o variant; only the discrete-token "
                             f"checkpoints (showlab/show-o, showlab/show-o-512x512) are supported")
    llm_folder = resolve_checkpoint(llm or showo_cfg.get("llm_model_path") or "microsoft/phi-1_5",
                                    "Phi config/tokenizer", arg="llm")
    require_files(llm_folder, "Phi config/tokenizer", ("config.json",), weights=False)
    cfg = ShowoConfig.from_dicts(showo_cfg, read_json(llm_folder / "config.json"))
    tokenizer = load_tokenizer(llm_folder)
    if len(tokenizer) != cfg.image_offset:
        raise OmnibenchError(f"tokenizer in {llm_folder} has {len(tokenizer)} tokens with the task tokens, "
                             f"Show-o expects {cfg.image_offset} (llm_vocab_size {cfg.llm_vocab_size} + 10)")
    model = Showo(cfg)
    strict_load(model, read_state_dict(folder, "Show-o checkpoint"), f"Show-o checkpoint {folder}")
    vq_folder = resolve_checkpoint(vq_model, "MAGVIT-v2 checkpoint", arg="vq_model")
    require_files(vq_folder, "MAGVIT-v2 checkpoint", names=())  # config.json is optional
    vq_file = vq_folder / "config.json"
    vq_cfg = read_json(vq_file) if vq_file.is_file() else {}
    names = {f.name for f in fields(MagvitConfig)}
    mcfg = MagvitConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in vq_cfg.items() if k in names})
    if mcfg.codebook_size != cfg.codebook_size:
        assumed = "" if vq_file.is_file() else " (it has no config.json: the published sizes were assumed)"
        raise OmnibenchError(f"MAGVIT-v2 in {vq_folder} has {mcfg.codebook_size} codes{assumed}, "
                             f"Show-o expects {cfg.codebook_size}")
    vq = MAGVITv2(mcfg)
    strict_load(vq, read_state_dict(vq_folder, "MAGVIT-v2 checkpoint"), f"MAGVIT-v2 checkpoint {vq_folder}")
    return model.eval(), vq.eval(), tokenizer


def save_pretrained(model: Showo, vq: MAGVITv2, base_tokenizer, root: Path) -> None:
    """Write root/{phi, show-o, magvitv2} in the layouts `from_pretrained` reads."""
    cfg = model.config
    phi = {"model_type": "phi", "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
           "num_attention_heads": cfg.num_attention_heads, "intermediate_size": cfg.intermediate_size,
           "partial_rotary_factor": cfg.partial_rotary_factor, "rope_theta": cfg.rope_theta,
           "layer_norm_eps": cfg.layer_norm_eps, "hidden_act": cfg.hidden_act, "vocab_size": cfg.llm_vocab_size}
    (root / "phi").mkdir(parents=True, exist_ok=True)
    (root / "phi" / "config.json").write_text(json.dumps(phi, indent=1))
    base_tokenizer.save_pretrained(str(root / "phi"))
    save_weights(model, root / "show-o")
    showo = {"w_clip_vit": False, "vocab_size": cfg.vocab_size, "llm_vocab_size": cfg.llm_vocab_size,
             "llm_model_path": str(root / "phi"), "codebook_size": cfg.codebook_size,
             "num_vq_tokens": cfg.num_vq_tokens}
    (root / "show-o" / "config.json").write_text(json.dumps(showo, indent=1))
    save_weights(vq, root / "magvitv2")
    (root / "magvitv2" / "config.json").write_text(json.dumps(asdict(vq.config), indent=1))


# --- tiny preset ------------------------------------------------------------------------------------
def tiny_base_tokenizer():
    """Phi's tokenizer family (byte-level BPE, <|endoftext|> as bos and eos), one token per byte."""
    return byte_bpe_tokenizer([], bos="<|endoftext|>", eos="<|endoftext|>")


def tiny_configs() -> tuple[ShowoConfig, MagvitConfig]:
    mcfg = MagvitConfig(ch=32, encoder_ch_mult=(1, 1, 2), encoder_blocks=(1, 1, 1), decoder_ch_mult=(1, 1, 2),
                        decoder_blocks=(1, 1, 1), z_channels=4)
    llm_vocab = len(tiny_base_tokenizer())
    cfg = ShowoConfig(vocab_size=llm_vocab + 10 + mcfg.codebook_size + 1, llm_vocab_size=llm_vocab,
                      codebook_size=mcfg.codebook_size, num_vq_tokens=16, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=128)
    return cfg, mcfg


def random_full(device, dtype: torch.dtype, seed: int = FULL_SEED):
    """(Show-o, MAGVIT-v2, tokenizer) at full size -- ShowoConfig() (Phi-1.5 sizes, vocabulary 58498) and
    MagvitConfig() -- with random weights (seeded), built directly on `device` and cast to `dtype`, and the
    byte-level tokenizer with the task tokens (its ids are valid Show-o ids). For speed and memory
    measurement only: no checkpoint is read and the outputs are noise."""
    torch.manual_seed(seed)
    with torch.device(device):
        model, vq = Showo(ShowoConfig()), MAGVITv2(MagvitConfig())
    random_init_(model)
    random_init_(vq)
    return model.to(dtype).eval(), vq.to(dtype).eval(), add_task_tokens(tiny_base_tokenizer())


def tiny_checkpoint() -> Path:
    """Build (once) the tiny preset under the omnibench cache: random weights from a fixed seed, in the
    official layouts, so that it loads through `from_pretrained`. Images are 16 px (4x4 tokens)."""
    from omnibench.data import build_once, cache_root

    cfg, mcfg = tiny_configs()
    digest = hashlib.sha256((json.dumps(cfg.to_dict()) + json.dumps(asdict(mcfg)) + str(TINY_SEED)).encode())
    root = cache_root() / "models" / f"showo-tiny-{digest.hexdigest()[:12]}"

    def build(tmp: Path) -> None:
        torch.manual_seed(TINY_SEED)
        save_pretrained(Showo(cfg), MAGVITv2(mcfg), tiny_base_tokenizer(), tmp)
        # config.json points at the phi folder by absolute path: rewrite it for the final location.
        showo_file = tmp / "show-o" / "config.json"
        showo_cfg = json.loads(showo_file.read_text())
        showo_cfg["llm_model_path"] = str(root / "phi")
        showo_file.write_text(json.dumps(showo_cfg, indent=1))
    return build_once(root, build)
