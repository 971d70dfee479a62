"""omnibench model adapters as lmms-eval models, so lmms-eval's own tasks can score our models.

Every name in `models.MODELS` (`omnimamba`, `hf`, ...) becomes an lmms-eval model of the same name:

    lmms-eval --model omnimamba --model_args pretrained=<hub id or dir> --device cuda --tasks pope

Enabling it:
- lmms-eval (0.7.3 checked) finds external models through the Python entry-point group
  `lmms_eval.models` (`ModelRegistryV2.load_entrypoint_manifests`; the `LMMS_EVAL_PLUGINS` variable is
  deprecated there and wants a `<plugin>.models` package layout we do not have). With this in
  pyproject.toml

      [project.entry-points."lmms_eval.models"]
      omnibench = "omnibench.lmms:manifests"

  and `pip install -e .`, the plain `lmms-eval` and `python -m lmms_eval` commands know our models.
- Without the entry point, or with an older lmms-eval (a plain `AVAILABLE_MODELS` table), launch
  through this module: it registers the models in-process and hands the command line to lmms-eval as is.

      python -m omnibench.lmms --model omnimamba --model_args pretrained=... --tasks pope
      accelerate launch -m omnibench.lmms --model omnimamba ...   (data parallel, lmms-eval's way)

Installing lmms-eval: `pip install lmms-eval` (or the `lmms` extra) resolves its full dependency list,
which replaces a CPU torch with a CUDA one and adds wandb, openai, timm, ... To keep the torch you have:

    pip install --no-deps lmms-eval==0.7.3
    pip install loguru pytz accelerate evaluate tenacity sacrebleu   # what its task code imports
    pip install pytablewriter                                         # the CLI's result table

lmms-eval 0.7.3's evaluator imports `filelock._api`, which filelock 4 no longer has: full runs need
`filelock<4` (its task code, which is all that tests/test_lmms_eval_parity.py imports, does not).

What the wrapper does: lmms-eval hands `generate_until` Instances whose args are (context, gen_kwargs,
doc_to_visual, doc_id, task, split); each becomes an omnibench `Request` (the context as the prompt, the
doc's images, gen_kwargs without `until`) answered by the adapter's `generate_text`, and the answer is cut
at the first `until` string, as lmms-eval's own models do. `--model_args` reach the adapter as the same
strings `run_eval.py --model_args` gives it (`dtype=` included); `--device` and `--batch_size` are
lmms-eval's. Our adapters decode greedily: sampling settings in gen_kwargs are passed on, and only an
adapter that reads them uses them. Log-likelihood and multi-round requests are refused.
"""
from __future__ import annotations

import functools
from typing import Any

from lmms_eval.api.model import lmms
from PIL import Image

from omnibench import dist
from omnibench.config import parse_kv
from omnibench.protocol import ModelAdapter, OmnibenchError, Request, chunks
from omnibench.registry import get_model_class

MODULE = __name__ if __name__ != "__main__" else "omnibench.lmms"


class OmnibenchLMM(lmms):
    """An omnibench adapter behind lmms-eval's model interface; one subclass per adapter name."""

    adapter_name: str = ""

    def __init__(self, device: str | None = None, batch_size: int | str = 1, **model_args: str) -> None:
        super().__init__()
        try:
            self.batch_size = max(1, int(batch_size))
        except ValueError:
            raise OmnibenchError(f"--batch_size {batch_size!r}: omnibench models take a fixed batch size") from None
        if device is None:
            import torch
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.adapter: ModelAdapter = get_model_class(self.adapter_name)(device=dist.local_device(device),
                                                                        **model_args)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> OmnibenchLMM:
        # Our parser, not lmms-eval's: adapters get the strings run_eval.py would give them ("1", not 1).
        # Of lmms-eval's own settings only --device and --batch_size apply; --model_args win over them.
        extra = {k: v for k, v in (additional_config or {}).items() if k in ("device", "batch_size") and v is not None}
        return cls(**{**extra, **parse_kv(arg_string, "--model_args")})

    def request(self, context: str, gen_kwargs: dict[str, Any], doc_to_visual, doc_id: int, task: str,
                split: str) -> Request:
        visuals = (doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else None) or []
        images = [v for v in visuals if isinstance(v, Image.Image)]
        if len(images) != len(visuals):
            raise OmnibenchError(f"{task} doc {doc_id}: omnibench models take images only, got "
                                 f"{sorted({type(v).__name__ for v in visuals})}")
        settings = {k: v for k, v in gen_kwargs.items() if k != "until"}
        return Request(f"{task}/{split}/{doc_id}", context, images, settings)

    def generate_until(self, requests) -> list[str]:
        outputs: list[str] = []
        for batch in chunks(requests, self.batch_size):
            args = [inst.args for inst in batch]
            texts = self.adapter.generate_text([self.request(*a) for a in args])
            if len(texts) != len(batch):
                raise OmnibenchError(f"model {self.adapter_name} returned {len(texts)} outputs for "
                                     f"{len(batch)} requests")
            outputs.extend(cut_at_stop(text, a[1].get("until")) for text, a in zip(texts, args))
        return outputs

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        raise OmnibenchError(f"model '{self.adapter_name}' answers generate_until tasks only, not loglikelihood")

    def generate_until_multi_round(self, requests) -> list[str]:
        raise OmnibenchError(f"model '{self.adapter_name}' answers generate_until tasks only, not multi-round")


def cut_at_stop(text: str, until: str | list[str] | None) -> str:
    """The text before the earliest stop string."""
    stops = [until] if isinstance(until, str) else list(until or [])
    ends = [text.find(s) for s in stops if s and s in text]
    return text[:min(ends)] if ends else text


@functools.cache
def lmms_model_class(name: str) -> type[OmnibenchLMM]:
    get_model_class(name)  # unknown name: the registry's error, with the known names
    return type(f"OmnibenchLMM_{name}", (OmnibenchLMM,), {"adapter_name": name, "__module__": MODULE})


def __getattr__(name: str) -> type[OmnibenchLMM]:
    # lmms-eval imports a model as "<module>.<attribute>": `omnibench.lmms.omnimamba` is built here.
    from omnibench.models import MODELS
    if name in MODELS:
        return lmms_model_class(name)
    raise AttributeError(f"module {MODULE!r} has no attribute {name!r}")


def manifests() -> list:
    """The `lmms_eval.models` entry point: one manifest per omnibench model name."""
    from lmms_eval.models.registry_v2 import ModelManifest
    from omnibench.models import MODELS
    return [ModelManifest(model_id=name, simple_class_path=f"{MODULE}.{name}") for name in sorted(MODELS)]


def register() -> None:
    """Make our models known to the lmms-eval imported in this process (any version we support)."""
    import lmms_eval.models as registry

    if hasattr(registry, "MODEL_REGISTRY_V2"):
        for manifest in manifests():
            registry.MODEL_REGISTRY_V2.register_manifest(manifest, overwrite=True)
    else:  # lmms-eval < 0.7: a name -> dotted class path table
        from omnibench.models import MODELS
        registry.AVAILABLE_MODELS.update({name: f"{MODULE}.{name}" for name in MODELS})


def main() -> None:
    register()
    try:
        from lmms_eval.cli.dispatch import main as lmms_eval_main
    except ImportError:  # lmms-eval < 0.7
        from lmms_eval.__main__ import cli_evaluate as lmms_eval_main
    lmms_eval_main()


if __name__ == "__main__":
    main()
