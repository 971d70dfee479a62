"""`--model hf`: any transformers image-text-to-text model (AutoProcessor + AutoModelForImageTextToText),
prompted through its own chat template and decoded greedily in batches.

`--model_args pretrained=<hub id or local dir>` loads a real checkpoint; `preset=tiny` builds a tiny
random-weight LLaVA (CLIP vision tower + Llama) with a byte-level tokenizer, saves it, and loads it back
through the same `from_pretrained` path. Its answers are noise: it exists to run the pipeline offline.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omnibench.models.common.checkpoint_io import (first_line, hub_error, is_local_path, is_read_failure, load_error,
                                         require_files, resolve_checkpoint)
from omnibench.data import build_once, cache_root
from omnibench.args import Arg
from omnibench.protocol import ModelAdapter, OmnibenchError, Request, random_weights_warning

TINY_VERSION = "1"
_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tiny_llava(folder: Path) -> None:
    """Write a tiny random-weight LLaVA checkpoint + processor in the standard HF layout."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor, PreTrainedTokenizerFast)
    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # transformers < 5
        from transformers import CLIPImageProcessor as ImageProcessor

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in ("<s>", "</s>", "<pad>", "<image>"):
        vocab[special] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", chat_template=_CHAT_TEMPLATE,
                               num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-2)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    # transformers writes no weights on a torch.distributed rank other than 0; here whichever rank holds
    # the build lock writes the preset, so it decides for itself, and a folder short of files never ships.
    model.should_save_on_this_rank = lambda is_main_process: is_main_process
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    require_files(folder, "tiny preset")


def resolve_tiny() -> Path:
    return build_once(cache_root() / "presets" / f"hf-tiny-llava-v{TINY_VERSION}", build_tiny_llava)


class HFAdapter(ModelAdapter):
    name = "hf"
    ARGS = (
        Arg("pretrained", str, None, "an image-text-to-text checkpoint: hub id or local folder"),
        Arg("preset", str, None, "tiny: a tiny random-weight LLaVA (tests)", ("tiny",)),
    )

    def __init__(self, device: str = "cpu", dtype: str = "auto", **model_args: Any) -> None:
        super().__init__(device, dtype, **model_args)
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        preset = self.args["preset"]
        source = str(resolve_tiny()) if preset == "tiny" else self.args["pretrained"]
        if not source:
            raise OmnibenchError("model hf needs --model_args pretrained=<hub id or local dir> (or preset=tiny)")
        torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
                       "float16": torch.float16}[dtype]
        if is_local_path(source):  # a folder: say what is missing before transformers tries
            folder = resolve_checkpoint(source, "checkpoint")
            require_files(folder, "checkpoint")
        try:  # transformers reads weights through safetensors or torch.load(weights_only=True)
            self.processor = AutoProcessor.from_pretrained(source)
            self.model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch_dtype, weights_only=True)
        except Exception as exc:
            if is_read_failure(exc):
                raise load_error(source, exc) from exc
            if isinstance(exc, OSError) and not is_local_path(source):
                raise hub_error(source, "checkpoint", exc) from exc
            raise OmnibenchError(f"cannot load '{source}' as a transformers image-text-to-text model: "
                                 f"{type(exc).__name__}: {first_line(exc)}") from exc
        self.model.to(device).eval()
        self.processor.tokenizer.padding_side = "left"
        self.source = source

    def generate_text(self, requests: Sequence[Request]) -> list[str]:
        import torch

        texts, images = [], []
        for req in requests:
            content = [{"type": "image"} for _ in req.images] + [{"type": "text", "text": req.prompt}]
            texts.append(self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                            add_generation_prompt=True))
            images.extend(req.images)
        inputs = self.processor(images=images or None, text=texts, padding=True, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        max_new = max(int(r.gen_kwargs.get("max_new_tokens", 32)) for r in requests)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]

    @classmethod
    def weights_warning(cls, args: dict[str, Any]) -> str | None:
        return random_weights_warning(args["preset"])
