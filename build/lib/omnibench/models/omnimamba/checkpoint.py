"""Finding, loading and writing OmniMamba checkpoints, and the `tiny` preset.

A checkpoint is a folder (or the hub repo `hustvl/OmniMamba`) holding `OmniMamba-1.3b.pth`, the full
state dict under upstream's names (the file upstream's inference scripts load). Optional beside it:
`config.json` (an `OmniMambaConfig`; absent means the published 1.3B sizes) and `tokenizer/` (absent
means `EleutherAI/gpt-neox-20b`, the tokenizer upstream uses). Upstream then adds `[PAD]` and its nine
task tokens; so do we, for every tokenizer, so their ids come out as upstream's.
"""
from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import torch

from omnibench.models.common.checkpoint_io import first_line, load_state_dict_file, read_json, resolve_checkpoint
from omnibench.protocol import OmnibenchError

log = logging.getLogger("omnibench")

from .modeling_omnimamba import (SPECIAL_TOKENS, OmniMamba, OmniMambaConfig, load_official_state_dict,
                                 official_state_dict)
from .vision import VisionConfig
from .vq import VQConfig

WEIGHTS_NAME = "OmniMamba-1.3b.pth"
# Whole submodules that upstream builds from their own published weights before loading its checkpoint
# non-strictly (timm's towers, LlamaGen's VQ): if the checkpoint lacks one entirely, it is taken from
# there (a local file or folder, or the hub id in the local cache), by the model argument named here.
SUBMODULE_SOURCES = {
    "vision_backbone.dino_featurizer.": ("dino_weights", "timm/vit_large_patch14_reg4_dinov2.lvd142m", "model.safetensors"),
    "vision_backbone.siglip_featurizer.": ("siglip_weights", "timm/ViT-SO400M-14-SigLIP-384", "open_clip_pytorch_model.bin"),
    "llm_backbone.vqvae.": ("vq_weights", "peizesun/llamagen_t2i", "vq_ds16_t2i.pt"),
}
DEFAULT_TOKENIZER = "EleutherAI/gpt-neox-20b"
TINY_SEED = 0


def add_task_tokens(tokenizer):
    """Upstream's UniversalPrompting: a [PAD] pad token, then the task tokens as added tokens."""
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    tokenizer.add_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, model_max_length=2048)
    except Exception as exc:
        raise OmnibenchError(f"cannot load the OmniMamba tokenizer from '{source}': {first_line(exc)} "
                             f"-- put a copy of {DEFAULT_TOKENIZER} in <checkpoint>/tokenizer") from exc
    return add_task_tokens(tok)


def resolve_weights(pretrained: str) -> Path:
    """A local folder / .pth file, else the hub repo id; an OmnibenchError names what was tried."""
    return resolve_checkpoint(pretrained, "OmniMamba checkpoint", filename=WEIGHTS_NAME)


def from_pretrained(pretrained: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                    sources: dict[str, str | None] | None = None):
    """(model, tokenizer, provenance) from a checkpoint folder, .pth file or hub id. `sources` overrides
    where a submodule the checkpoint lacks entirely is read from (SUBMODULE_SOURCES' argument names);
    `provenance` says, per submodule taken from elsewhere, which file it came from."""
    weights = resolve_weights(pretrained)
    sd = load_state_dict_file(weights)  # first: a file that is no checkpoint fails before anything else
    folder = weights.parent
    cfg_file = folder / "config.json"
    cfg = OmniMambaConfig.from_dict(read_json(cfg_file)) if cfg_file.is_file() else OmniMambaConfig()
    tokenizer = load_tokenizer(str(folder / "tokenizer") if (folder / "tokenizer").is_dir() else DEFAULT_TOKENIZER)
    with torch.device(device):
        model = OmniMamba(cfg)
    sd, provenance = complete_submodules(sd, official_state_dict(model), weights, sources or {})
    try:
        load_official_state_dict(model, sd)
    except ValueError as exc:
        raise OmnibenchError(f"{weights}: {exc}") from exc
    return model.to(dtype).eval(), tokenizer, provenance


def complete_submodules(sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], weights: Path,
                        sources: dict[str, str | None]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`sd` with every known submodule it lacks entirely read from that submodule's own published
    weights (never left random); a submodule it has in part stays a strict-load error."""
    sd, provenance = dict(sd), {}
    for prefix, (arg, hub_id, filename) in SUBMODULE_SOURCES.items():
        wanted = [k for k in expected if k.startswith(prefix)]
        if not wanted or any(k.startswith(prefix) for k in sd):
            continue
        source = sources.get(arg) or hub_id
        try:
            path = resolve_checkpoint(source, f"{prefix.rstrip('.')} weights", filename=filename)
        except OmnibenchError as exc:
            raise OmnibenchError(f"{weights} lacks the whole {prefix.rstrip('.')} submodule ({len(wanted)} keys) "
                                 f"and its published weights are not here ({first_line(exc)}): download them and "
                                 f"pass --model_args {arg}=<file>") from None
        inside = _unwrap(load_state_dict_file(path), [k[len(prefix):] for k in wanted])
        if "pos_embed" in inside and prefix + "pos_embed" in expected:
            inside["pos_embed"] = resample_pos_embed(inside["pos_embed"], expected[prefix + "pos_embed"].shape[1])
        missing = [k for k in wanted if k[len(prefix):] not in inside]
        if missing:
            raise OmnibenchError(f"{path} does not hold the {prefix.rstrip('.')} weights the model needs (lacks "
                                 f"{missing[0][len(prefix):]} and {len(missing) - 1} more): pass --model_args {arg}=<file>")
        sd.update({k: inside[k[len(prefix):]] for k in wanted})
        provenance[prefix.rstrip(".")] = str(path)
        log.warning(f"{weights} lacks {prefix.rstrip('.')}: loaded it from {path}, its published weights "
                    f"(as upstream's non-strict load keeps them)")
    return sd, provenance


def _unwrap(sd: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """`sd` under the names the model uses: a published file may nest them (open_clip's SigLIP file holds
    timm's tower under `visual.trunk.`)."""
    for wrapper in ("", "visual.trunk.", "module.", "model."):
        if all(wrapper + n in sd for n in names if not n.endswith("pos_embed")):
            return {k[len(wrapper):]: v for k, v in sd.items() if k.startswith(wrapper)}
    return sd


def resample_pos_embed(pos: torch.Tensor, rows: int) -> torch.Tensor:
    """A (1, n, d) grid of position embeddings brought to `rows` = side^2 positions as timm does when a
    tower is built at another image size (bicubic, antialiased, in float32): DINOv2's published 37x37
    grid (518 px) to the 27x27 that upstream's 384 px tower uses."""
    import torch.nn.functional as F

    n, side = pos.shape[1], math.isqrt(rows)
    if n == rows:
        return pos
    old = math.isqrt(n)
    if old * old != n or side * side != rows:
        raise OmnibenchError(f"cannot resample {n} position embeddings to {rows}: not square grids")
    grid = pos.float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, rows, -1).to(pos.dtype)


def save_pretrained(model: OmniMamba, tokenizer_base, folder: Path) -> None:
    """Write `folder` in the layout `from_pretrained` reads (the base tokenizer, before task tokens)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(official_state_dict(model), folder / WEIGHTS_NAME)
    (folder / "config.json").write_text(model.config.to_json())
    tokenizer_base.save_pretrained(str(folder / "tokenizer"))


def random_full(device: str, dtype: torch.dtype, seed: int = 0) -> OmniMamba:
    """The full 1.3B architecture with random weights (speed and memory measurement only), built on the
    target device. Upstream's init: small embeddings, out_proj scaled by 1/sqrt(depth); both LoRA B
    matrices non-zero so each route does real work."""
    torch.manual_seed(seed)
    cfg = OmniMambaConfig()
    with torch.device(device):
        model = OmniMamba(cfg)
    with torch.no_grad():
        for emb in (model.lm.backbone.embedding, model.lm.backbone.img_embeddings.word_embeddings):
            emb.weight.normal_(std=0.02)
        for layer in model.lm.backbone.layers:
            layer.mixer.out_proj.weight.div_(math.sqrt(cfg.n_layer))
            for route in ("mmu", "t2i"):
                getattr(layer.mixer.in_proj, f"{route}_lora_B0").weight.normal_(std=0.02)
    return model.to(dtype).eval()


# --- tiny preset ----------------------------------------------------------------------------------
TINY_WORDS = ("the a an is are was of in on at to and or with what which who how many there this that "
              "it image picture photo describe answer question yes no not one two three four five six "
              "red green blue yellow black white cat dog man woman person car bus tree sky table bed "
              "lamp bedroom bicycle sheep horse bird left right color shape square circle single word "
              "phrase please detail using USER ASSISTANT").split()


def tiny_config() -> OmniMambaConfig:
    n = len(add_task_tokens(tiny_base_tokenizer()))
    return OmniMambaConfig(
        d_model=64, n_layer=2, vocab_size=n + (-n) % 16,  # upstream pads the text vocabulary to 16
        image_vocab_size=64, num_image_tokens=16, d_state=16,
        headdim=16, chunk_size=16,
        vision=VisionConfig(image_size=56, dino_width=32, dino_layers=2, dino_heads=2, siglip_width=32,
                            siglip_layers=2, siglip_heads=2, siglip_mlp=64),
        vq=VQConfig(codebook_size=64, ch=32, ch_mult=(1, 1, 1), z_channels=32, num_res_blocks=1))


def tiny_base_tokenizer():
    """A word-level tokenizer made in code (no download), with gpt-neox's <|endoftext|> as bos/eos."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<|endoftext|>", "[UNK]", *TINY_WORDS, *".,:;?!'\"-()0123456789"])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="[UNK]")


def tiny_checkpoint() -> Path:
    """Build (once) the tiny preset's folder under the omnibench cache and return it: random weights
    from a fixed seed, written in the official layout so it loads through `from_pretrained`."""
    from omnibench.data import build_once, cache_root

    cfg = tiny_config()
    digest = hashlib.sha256((cfg.to_json() + str(TINY_SEED)).encode()).hexdigest()[:12]

    def build(tmp: Path) -> None:
        torch.manual_seed(TINY_SEED)
        save_pretrained(OmniMamba(cfg), tiny_base_tokenizer(), tmp)
    return build_once(cache_root() / "models" / f"omnimamba-tiny-{digest}", build)
