"""What the random-weight presets (`preset=tiny`, `preset=full`) of every family are made from: small
random weights and a byte-level tokenizer built in code, so the real loading path runs offline."""
from __future__ import annotations

import torch
import torch.nn as nn

from omnibench.args import Arg

# The two random-weight presets every family offers, and the two ways every family runs.
PRESET_ARG = Arg("preset", str, None, "tiny: random tiny model (tests); full: full size, random weights "
                 "(speed and memory only)", ("tiny", "full"))


def mode_arg(best: str, as_published: str) -> Arg:
    """`mode`: `best` (the family's fastest kernels) or `as_published` (its authors' code path)."""
    return Arg("mode", str, "best", f"best: {best}; as_published: {as_published}", ("best", "as_published"))


def random_init_(module: nn.Module, std: float = 0.02) -> nn.Module:
    """Every weight matrix, embedding and convolution kernel (parameters of two or more dims) drawn from
    N(0, std); norms and biases keep their construction values. Small, finite weights: activations stay far
    from bfloat16's range in a network that was never trained."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
    return module


def byte_bpe_tokenizer(specials: list[str], bos: str, eos: str, pad: str | None = None, add_bos: bool = False):
    """A byte-level BPE tokenizer made in code (no merges: one token per byte), the family of both
    Phi's and DeepSeek's tokenizers. `add_bos` prepends `bos` on encode, as Llama tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(dict.fromkeys([bos, eos] + ([pad] if pad else []) + specials)))
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))])
    kwargs = {"pad_token": pad} if pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, **kwargs)
