"""Finding, loading and writing JanusFlow checkpoints, and the `tiny` preset.

`deepseek-ai/JanusFlow-1.3B` (or a local copy): `config.json` (MultiModalityConfig), the weights
(`*.safetensors`), the tokenizer, `preprocessor_config.json` (VLMImageProcessor: image_size, mean/std)
and optionally `processor_config.json` (VLChatProcessor). Images are decoded by the SDXL VAE
(`stabilityai/sdxl-vae`, diffusers' AutoencoderKL), loaded on first use.

`preset=full` (`random_full`, `random_sdxl_vae`) is the full-size architecture with random weights, for
speed and memory measurement only.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from omnibench.protocol import OmnibenchError

from omnibench.models.common.checkpoint_io import (check_keys, first_line, is_read_failure, load_error, read_json,
                                         read_state_dict, require_files, resolve_checkpoint)
from omnibench.models.common.checkpoint_io import load_fast_tokenizer
from omnibench.models.common.presets import byte_bpe_tokenizer, random_init_

from .modeling_janusflow import (LLM_DEFAULTS, JanusFlow, JanusFlowConfig, SiglipConfig, config_json,
                                 official_state_dict, to_model_state_dict)
from .uvit import GenConfig

DEFAULT_PRETRAINED = "deepseek-ai/JanusFlow-1.3B"
DEFAULT_VAE = "stabilityai/sdxl-vae"
TINY_SEED = 0
FULL_SEED = 0
# stabilityai/sdxl-vae's config.json (the sizes; diffusers' defaults for the rest)
SDXL_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, act_fn="silu", norm_num_groups=32, sample_size=1024, scaling_factor=0.13025)
# VLChatProcessor's tags; it adds any the tokenizer lacks as additional special tokens.
IMAGE_TAG, BOI_TAG, EOI_TAG = "<image_placeholder>", "<begin_of_image>", "<end_of_image>"
GEN_TAG, PAD_TOKEN = "<｜begin▁of▁generation｜>", "<｜▁pad▁｜>"
BOS_TOKEN, EOS_TOKEN = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
SYSTEM_PROMPT = ("You are a helpful language and vision assistant. You are able to understand the visual "
                 "content that the user provides, and assist the user with a variety of tasks using natural language.")


@dataclass
class ImageProcessing:
    """VLMImageProcessor settings (preprocessor_config.json)."""

    image_size: int = 384
    min_size: int = 14
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1.0 / 255.0
    do_normalize: bool = True


def load_tokenizer(folder: Path):
    tok = load_fast_tokenizer(folder, "JanusFlow")
    for tag in (IMAGE_TAG, GEN_TAG, BOI_TAG, EOI_TAG):
        if tag not in tok.get_vocab():
            tok.add_special_tokens({"additional_special_tokens": [tag]})
    tok.pad_token_id = tok.get_vocab().get(PAD_TOKEN)
    tok.padding_side = "left"
    return tok


def from_pretrained(pretrained: str = DEFAULT_PRETRAINED, attn: str = "sdpa"):
    """(JanusFlow fp32 on CPU, tokenizer with the processor's tags, ImageProcessing, processor_config)."""
    folder = resolve_checkpoint(pretrained, "JanusFlow checkpoint")
    require_files(folder, "JanusFlow checkpoint")  # config.json and weights, before anything is read
    upstream = read_json(folder / "config.json")
    cfg = JanusFlowConfig.from_upstream(upstream)
    sd = read_state_dict(folder, "JanusFlow checkpoint")
    infer_gen_sizes(cfg.gen, upstream, sd)
    model = JanusFlow(cfg, attn)
    check_keys(official_state_dict(model), sd, f"JanusFlow checkpoint {folder}")
    model.load_state_dict(to_model_state_dict(model, sd), strict=True)
    pre_file, proc_file = folder / "preprocessor_config.json", folder / "processor_config.json"
    pre = read_json(pre_file) if pre_file.is_file() else {}
    names = ImageProcessing.__dataclass_fields__
    processing = ImageProcessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in pre.items() if k in names})
    processor = read_json(proc_file) if proc_file.is_file() else {}
    return model.eval(), load_tokenizer(folder), processing, processor


def infer_gen_sizes(gen: GenConfig, upstream: dict, sd: dict[str, torch.Tensor]) -> None:
    """Generation-encoder sizes that config.json does not spell out are read off the weights: the
    in_conv kernel and channels, and the decoder's number of 2x unpatchify steps."""
    enc = upstream.get("vision_gen_enc_config", {}).get("params", {})
    dec = upstream.get("vision_gen_dec_config", {}).get("params", {})
    w = sd.get("vision_gen_enc_model.in_conv.weight")
    if w is not None:
        gen.channels, gen.latent_channels = w.shape[0], w.shape[1]
        if "kernel_size" not in enc:
            gen.kernel_size = w.shape[-1]
    convs = {k.split(".")[2] for k in sd if k.startswith("vision_gen_dec_model.out_convs.")}
    if convs and "upsamples" not in dec:
        gen.upsamples = len(convs)


def _autoencoder_kl():
    try:
        from diffusers import AutoencoderKL
    except ImportError as exc:
        raise OmnibenchError("JanusFlow decodes images with the SDXL VAE, which needs the 'diffusers' package "
                             "(pip install diffusers)") from exc
    return AutoencoderKL


def load_vae(source: str, device, dtype):
    AutoencoderKL = _autoencoder_kl()
    folder = resolve_checkpoint(source, "SDXL VAE", arg="vae")
    require_files(folder, "SDXL VAE", ("config.json",), weights=False)
    try:  # diffusers reads the weights through safetensors or torch.load(weights_only=True)
        vae = AutoencoderKL.from_pretrained(str(folder), torch_dtype=dtype)
    except Exception as exc:
        raise load_error(folder, exc) if is_read_failure(exc) else OmnibenchError(
            f"cannot load the VAE from {folder}: {first_line(exc)}") from exc
    return vae.to(device).eval()


def full_config() -> JanusFlowConfig:
    """The published sizes: DeepSeek-LLM 1.3B, SigLIP-L/16 at 384 px, the generation encoder/decoder
    defaults. `max_position_embeddings` is raised past the speed sweep's 100k tokens: with the default
    RoPE, transformers computes cos/sin from the position ids and reads this number only as a label
    (dynamic RoPE variants would rescale past it), so the weights and the function are unchanged."""
    return JanusFlowConfig(llm=dict(LLM_DEFAULTS, max_position_embeddings=131072))


def random_full(device, dtype: torch.dtype, attn: str = "sdpa", seed: int = FULL_SEED):
    """(JanusFlow, tokenizer) at full size (`full_config`) with random weights (seeded), built directly on
    `device` and cast to `dtype`, and the tiny preset's byte-level tokenizer with the special tokens (its
    ids are valid DeepSeek ids). For speed and memory measurement only: the outputs are noise."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = JanusFlow(full_config(), attn)
    tok = tiny_tokenizer()
    tok.padding_side = "left"
    return random_init_(model).to(dtype).eval(), tok


def random_sdxl_vae(device, dtype: torch.dtype, seed: int = FULL_SEED):
    """diffusers' AutoencoderKL in stabilityai/sdxl-vae's configuration with random weights, for preset=full."""
    AutoencoderKL = _autoencoder_kl()
    torch.manual_seed(seed)
    with torch.device(device):
        vae = AutoencoderKL(**SDXL_VAE)
    return random_init_(vae).to(dtype).eval()


def save_pretrained(model: JanusFlow, tokenizer, processing: ImageProcessing, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in official_state_dict(model).items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(config_json(model.config))
    tokenizer.save_pretrained(str(folder))
    pre = {k: list(v) if isinstance(v, tuple) else v for k, v in processing.__dict__.items()}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=1))


# --- tiny preset ------------------------------------------------------------------------------------
def tiny_tokenizer():
    """DeepSeek's tokenizer family (byte-level BPE, bos added on encode) with its special tokens."""
    return byte_bpe_tokenizer([IMAGE_TAG, BOI_TAG, EOI_TAG, GEN_TAG], bos=BOS_TOKEN, eos=EOS_TOKEN, pad=PAD_TOKEN,
                              add_bos=True)


def tiny_config(tok) -> JanusFlowConfig:
    llm = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, hidden_size=64,
               intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-6,
               rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False)
    siglip = SiglipConfig(image_size=32, patch_size=16, width=32, layers=2, heads=2, mlp=64)
    return JanusFlowConfig(llm=llm, siglip=siglip,
                           gen=GenConfig(latent_channels=4, latent_size=8, channels=32, kernel_size=2, stride=2,
                                         layers_in_middle=2, upsamples=1))


def tiny_checkpoint() -> Path:
    """Build (once) the tiny preset under the omnibench cache: random weights from a fixed seed, in the
    official layout (plus a tiny AutoencoderKL in vae/ when diffusers is installed), so that it loads
    through `from_pretrained`. Latents 4 x 8 x 8 -> 16 generation tokens; images 32 px for SigLIP."""
    from omnibench.data import build_once, cache_root

    tok = tiny_tokenizer()
    cfg = tiny_config(tok)
    digest = hashlib.sha256((config_json(cfg) + str(TINY_SEED)).encode()).hexdigest()[:12]

    def build(tmp: Path) -> None:
        torch.manual_seed(TINY_SEED)
        model = JanusFlow(cfg)
        for p in model.parameters():  # zero-initialised upstream (GRN, begin-of-image): make them count
            if torch.count_nonzero(p) == 0:
                torch.nn.init.normal_(p, std=0.02)
        save_pretrained(model, tok, ImageProcessing(image_size=32), tmp)
        # As on the hub: a byte-level BPE that declares itself a LlamaTokenizerFast.
        tok_cfg = json.loads((tmp / "tokenizer_config.json").read_text())
        tok_cfg.update(tokenizer_class="LlamaTokenizerFast", add_bos_token=True)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=1))
        try:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                layers_per_block=1, norm_num_groups=4, sample_size=16)
            vae.save_pretrained(str(tmp / "vae"))
        except ImportError:
            pass
    return build_once(cache_root() / "models" / f"janusflow-tiny-{digest}", build)
