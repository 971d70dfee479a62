"""Finding checkpoints and reading weight files, for every model family.

Weights are read only through safetensors or `torch.load(weights_only=True)`: a file that would need
arbitrary unpickling is refused, never executed. Every failure is an OmnibenchError of one line that
names the path or hub id tried and the fix.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Sequence

import torch

from omnibench.protocol import OmnibenchError

WEIGHTS_GLOBS = ("*.safetensors", "pytorch_model*.bin")
LIST_KEYS = 5  # key lists in errors: the first few, then the count


def first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch colours parts of its messages
    return (text.splitlines()[0].strip() if text else type(exc).__name__)[:200]


def _chain(exc: BaseException):
    """`exc` and the exceptions it was raised from (transformers and diffusers wrap torch.load's)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _refusal_reason(exc: BaseException) -> str:
    """The line of torch's weights_only message that says what it refused (torch's first line only
    suggests loading unsafely)."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()]
    for ln in lines:
        tail = ln.split("WeightsUnpickler error:")[-1].strip()
        if tail and ("GLOBAL" in tail or "Unsupported" in tail or "WeightsUnpickler error:" in ln):
            return tail.split(". Please use")[0][:200]
    return first_line(exc)


def _is_lfs_pointer(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(64).startswith(b"version https://git-lfs")


def _read_failure(exc: BaseException) -> BaseException | None:
    """The exception in `exc`'s chain that says a weight file could not be read: refused by
    weights_only, or truncated / corrupt."""
    for e in _chain(exc):
        text = str(e)
        if ("Weights only load failed" in text or "PytorchStreamReader" in text or type(e).__name__ == "SafetensorError"
                or isinstance(e, (pickle.UnpicklingError, EOFError))):
            return e
    return None


def is_read_failure(exc: BaseException) -> bool:
    """Whether a library's loading error (transformers, diffusers) comes from an unreadable weight file."""
    return _read_failure(exc) is not None


def load_error(path: Path | str, exc: BaseException) -> OmnibenchError:
    """The one-line error for a weight file (or a folder of them) that could not be read."""
    if _is_lfs_pointer(Path(path)):
        return OmnibenchError(f"cannot read checkpoint {path}: it is a git-lfs pointer, not the weights "
                              f"(run `git lfs pull` in its repository, or download the file itself)")
    cause = _read_failure(exc) or exc
    if "Weights only load failed" in str(cause):
        reason = _refusal_reason(cause)
        if "GLOBAL" in reason:  # the pickle names a Python callable or class: code, not tensors
            return OmnibenchError(
                f"refusing to load {path}: it holds pickled Python objects, not just tensors (torch.load "
                f"weights_only=True rejected it: {reason}); convert it to safetensors or a plain state dict")
        return OmnibenchError(
            f"refusing to load {path}: torch.load weights_only=True rejected it ({reason}), so it is corrupt or "
            f"a pickle of more than tensors; re-download it, or convert it to safetensors or a plain state dict")
    reason = first_line(cause).split(". ")[0]  # torch goes on to guess why, over several sentences
    reason = reason if reason == type(cause).__name__ else f"{type(cause).__name__}: {reason}"
    return OmnibenchError(f"cannot read checkpoint {path}: {reason} (re-download it)")


def load_state_dict_file(path: Path | str) -> dict[str, torch.Tensor]:
    """One weight file as a state dict on the CPU: `*.safetensors` through safetensors, anything else
    through `torch.load(weights_only=True)`. A trainer checkpoint that nests the weights under a single
    `model` or `state_dict` key is unwrapped."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or unsafe: every reason becomes one line naming the file
        raise load_error(path, exc) from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(sd, dict) and set(sd) == {wrapper} and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict):
        raise OmnibenchError(f"cannot read checkpoint {path}: it holds a {type(sd).__name__}, not a state dict "
                             f"(a dict of tensors); save model.state_dict() instead")
    stray = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if stray:
        raise OmnibenchError(f"cannot read checkpoint {path}: {_some(stray)} hold(s) no tensor; "
                             f"save model.state_dict() instead")
    return sd


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder: its safetensors shards, else its PyTorch bin shards."""
    for pattern in WEIGHTS_GLOBS:
        files = sorted(p for p in folder.glob(pattern) if p.is_file())
        if files:
            return files
    return []


def require_files(folder: Path, what: str, names: Sequence[str] = ("config.json",), weights: bool = True) -> list[Path]:
    """`folder`'s weight files, after checking that it holds them (if `weights`) and every file in
    `names`; an OmnibenchError names the folder and everything it lacks."""
    files = weight_files(folder) if weights else []
    missing = [n for n in names if not (folder / n).is_file()]
    if weights and not files:
        missing.append("weights (" + " or ".join(WEIGHTS_GLOBS) + ")")
    if missing:
        raise OmnibenchError(f"{what} folder {folder} lacks {', '.join(missing)} "
                             f"-- download the complete checkpoint into it")
    return files


def read_state_dict(folder: Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """All weight files of a checkpoint folder (`weight_files`) merged into one state dict."""
    sd: dict[str, torch.Tensor] = {}
    for file in require_files(folder, what, names=()):
        sd.update(load_state_dict_file(file))
    return sd


def read_json(path: Path) -> dict:
    """A checkpoint's JSON config; a malformed one is a one-line error naming it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OmnibenchError(f"cannot read {path}: {first_line(exc)} (re-download it)") from exc
    if not isinstance(data, dict):
        raise OmnibenchError(f"cannot read {path}: it holds a JSON {type(data).__name__}, not an object (re-download it)")
    return data


def is_local_path(source: str) -> bool:
    """True unless `source` could be a hub repo id (`owner/name`) that is not a local path."""
    return (Path(source).expanduser().exists() or Path(source).is_absolute()
            or source.startswith((".", "~")) or source.count("/") != 1)


def resolve_checkpoint(source: str, what: str, arg: str = "pretrained", filename: str | None = None) -> Path:
    """A local folder (or, with `filename`, that file in it, or a file given directly), else the hub
    repo `source` from the local hub cache or downloaded: its snapshot folder, or just `filename`."""
    path = Path(source).expanduser()
    if path.is_dir():
        if filename is None:
            return path
        require_files(path, what, (filename,), weights=False)
        return path / filename
    if path.is_file():
        if filename is None:
            raise OmnibenchError(f"{what} {path} is a file; pass {arg}=<the folder holding it>")
        return path
    if is_local_path(source):
        raise OmnibenchError(f"{what} not found: {source} is not a local folder "
                             f"-- download it and pass {arg}=<its local folder>")
    try:
        from huggingface_hub import hf_hub_download, snapshot_download

        return Path(hf_hub_download(source, filename) if filename else snapshot_download(source))
    except Exception as exc:
        raise hub_error(source, what, exc, arg) from exc


def hub_error(source: str, what: str, exc: BaseException, arg: str = "pretrained") -> OmnibenchError:
    """The one-line error for a hub repo id that neither the hub cache nor the hub gave."""
    return OmnibenchError(f"{what} '{source}' is not a local folder and the hub did not give it "
                          f"({hub_reason(exc)}) -- download it and pass {arg}=<its local folder>")


def hub_reason(exc: BaseException) -> str:
    """Why the hub did not give a repo, in a few words."""
    from huggingface_hub import constants, errors

    for e in _chain(exc):  # transformers wraps the hub's errors in an OSError
        if isinstance(e, errors.LocalEntryNotFoundError) or "outgoing traffic has been disabled" in str(e):
            return ("not in the local hub cache, and HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE
                    else "not in the local hub cache, and the hub cannot be reached")
        if isinstance(e, errors.RepositoryNotFoundError):
            return "no such hub repo, or it is private or gated"
        if isinstance(e, errors.EntryNotFoundError):
            return "the hub repo lacks that file"
    return first_line(exc)


def _some(keys: Sequence[str]) -> str:
    more = " ..." if len(keys) > LIST_KEYS else ""
    return f"{', '.join(keys[:LIST_KEYS])}{more} ({len(keys)} in all)"


def check_keys(expected: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], what: str) -> None:
    """An OmnibenchError naming any missing, unexpected or misshapen key of `sd` (one line: the first
    few keys of each kind and their count)."""
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    parts = [f"{label} key(s) {_some(keys)}" for label, keys in (("missing", missing), ("unexpected", unexpected))
             if keys]
    if parts:
        raise OmnibenchError(f"{what} does not match the architecture: " + "; ".join(parts))
    wrong = [k for k, v in expected.items() if tuple(sd[k].shape) != tuple(v.shape)]
    if wrong:
        key = wrong[0]
        others = f" (and {len(wrong) - 1} more misshapen key(s))" if len(wrong) > 1 else ""
        raise OmnibenchError(f"{what}: key {key} has shape {tuple(sd[key].shape)}, the model expects "
                             f"{tuple(expected[key].shape)}{others}")


def strict_load(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """Load `sd` key for key; any missing, unexpected or misshapen key is an OmnibenchError naming it."""
    check_keys(module.state_dict(), sd, what)
    module.load_state_dict(sd, strict=True)


def load_fast_tokenizer(folder: Path, what: str, **kwargs):
    """The tokenizer exactly as serialised in `tokenizer.json` (PreTrainedTokenizerFast), else AutoTokenizer.
    Several transformers 5 releases rebuild tokenizers that declare a SentencePiece class (DeepSeek's
    say LlamaTokenizerFast) with a Metaspace pre-tokenizer over a byte-level vocabulary, which loses
    spaces (transformers issues #45488, #48206); the serialised pipeline is what upstream ran under v4."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        if (folder / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(str(folder), **kwargs)
        return AutoTokenizer.from_pretrained(str(folder), **kwargs)
    except Exception as exc:
        raise OmnibenchError(f"cannot load the {what} tokenizer from {folder}: {first_line(exc)}") from exc
