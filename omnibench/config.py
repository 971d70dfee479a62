"""The run configuration: what the CLI flags resolve to, hashed into the cache key."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omnibench.protocol import OmnibenchError


def parse_kv(text: str | None, flag: str) -> dict[str, str]:
    """'a=1,b=x' -> {'a': '1', 'b': 'x'}; anything else is a one-line error naming the flag."""
    if not text:
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise OmnibenchError(f"malformed {flag} entry '{part}': expected key=value pairs separated by commas")
        out[key] = value.strip()
    return out


def scoped_args(name: str, args: dict[str, str]) -> dict[str, str]:
    """`key=v` applies to every task (or model), `<name>.key=v` to that one only, and wins."""
    out = {k: v for k, v in args.items() if "." not in k}
    out.update({k.split(".", 1)[1]: v for k, v in args.items() if k.startswith(name + ".")})
    return out


def resolve_aliases(tasks: list[str], task_args: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """lmms-eval's task names (`mmmu_val`, ...) as ours plus the task arguments they fix; an argument the
    user gave that contradicts an alias, or one task named twice, is a one-line error."""
    from omnibench.tasks import ALIASES

    names, args = [], dict(task_args)
    for name in tasks:
        canonical, fixed = ALIASES.get(name, (name, {}))
        if canonical in names:
            raise OmnibenchError(f"--tasks names {canonical} twice ({name} is {canonical}): run them separately")
        names.append(canonical)
        for key, value in fixed.items():
            given = args.get(f"{canonical}.{key}", args.get(key))
            if given is not None and given != value:
                raise OmnibenchError(f"--tasks {name} means {canonical} with {key}={value}, but --task_args gives "
                                     f"{key}={given}: drop one")
            args[f"{canonical}.{key}"] = value
    return names, args


# Generation settings `--gen_kwargs` may carry: omnibench's models decode greedily, so only the settings
# that mean greedy decoding are accepted besides the length.
GREEDY_GEN_KWARGS = {"temperature": 0.0, "do_sample": False, "num_beams": 1, "top_p": 1.0}


def parse_gen_kwargs(text: str | None) -> dict[str, Any]:
    """lmms-eval's `--gen_kwargs k=v,...`: `max_new_tokens` (a positive integer) overrides every task's
    answer length; greedy-decoding settings are accepted as no-ops; anything else is refused."""
    out: dict[str, Any] = {}
    for key, value in parse_kv(text, "--gen_kwargs").items():
        if key == "max_new_tokens":
            if not value.isdigit() or int(value) < 1:
                raise OmnibenchError(f"--gen_kwargs max_new_tokens={value}: give a positive integer")
            out[key] = int(value)
        elif key in GREEDY_GEN_KWARGS:
            want = GREEDY_GEN_KWARGS[key]
            ok = str(value).lower() == str(want).lower() if isinstance(want, bool) else _number(value) == want
            if not ok:
                raise OmnibenchError(f"--gen_kwargs {key}={value} is not supported: omnibench's models decode "
                                     f"greedily ({key}={want} is accepted)")
        else:
            raise OmnibenchError(f"--gen_kwargs {key} is not supported (supported: max_new_tokens, and "
                                 f"{', '.join(f'{k}={v}' for k, v in GREEDY_GEN_KWARGS.items())})")
    return out


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def task_args_for(tasks: list[str], args: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each task's own `--task_args`: `<task>.key=v` for that task, `key=v` for every listed task that
    declares `key`. A key no listed task takes, or a prefix naming a task not listed, fails here."""
    from omnibench import registry

    declared = {name: {a.name for a in registry.get_task_class(name).ARGS} for name in tasks}
    for key in args:
        scope, dot, bare = key.rpartition(".")
        if dot and scope not in declared:
            raise OmnibenchError(f"--task_args {key}: task '{scope}' is not in --tasks ({', '.join(tasks)})")
        if not dot and not any(key in names for names in declared.values()):
            known = sorted(set().union(*declared.values()))
            raise OmnibenchError(f"unknown --task_args key '{key}': no task of {', '.join(tasks)} takes it "
                                 f"(known: {', '.join(known)}; see --task_args help)")
    return {name: {**{k: v for k, v in args.items() if "." not in k and k in declared[name]},
                   **{k.split(".", 1)[1]: v for k, v in args.items() if k.startswith(name + ".")}}
            for name in tasks}


def parse_limit(text: str | None) -> float | None:
    """lmms-eval's --limit: a positive count, or a fraction in (0, 1) of each task."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise OmnibenchError(f"--limit {text!r} is not a number: give a positive count or a fraction in (0, 1)") from None
    if value <= 0 or (value >= 1 and value != int(value)):
        raise OmnibenchError(f"--limit {text} selects nothing: give a positive count or a fraction in (0, 1)")
    return value


def check_device(device: str, *, present: bool = True) -> str:
    """`cpu`, `cuda` or `cuda:N`, checked against the GPUs torch can see (unless `present` is False: a device
    named only to select results measured elsewhere); anything else is a one-line error."""
    device = device.strip().lower()
    kind, sep, index = device.partition(":")
    if device == "cpu":
        return device
    if kind != "cuda" or (sep and not index.isdigit()):
        raise OmnibenchError(f"--device {device!r} is not a device omnibench runs on: give cpu, cuda or cuda:N")
    if not present:
        return device
    import torch

    if not torch.cuda.is_available():
        raise OmnibenchError(f"--device {device} but no CUDA GPU is visible to torch (use --device cpu, or check "
                             "CUDA_VISIBLE_DEVICES and that torch is a CUDA build)")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise OmnibenchError(f"--device {device} but torch sees {count} CUDA GPU(s): give cuda:0 to cuda:{count - 1}")
    return device


def check_at_least(flag: str, value: float, minimum: float, exclusive: bool = False) -> None:
    """A numeric flag's lower bound (NaN fails too), as a one-line error naming the flag."""
    if not (value > minimum if exclusive else value >= minimum):
        raise OmnibenchError(f"{flag} {value:g} must be {'greater than' if exclusive else 'at least'} {minimum:g}")


def check_writable_dir(path: str, flag: str) -> Path:
    """A folder that is writable or can be created; checked without creating anything, so a bad path
    fails before the run writes its first file."""
    folder = Path(path)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OmnibenchError(f"{flag} {path} cannot be a folder: {probe} is a file (give a folder path)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OmnibenchError(f"{flag} {path} is not writable: no write permission on {probe} "
                             "(give a folder you can write to)")
    return folder


@dataclass
class RunConfig:
    model: str
    model_args: dict[str, str] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    task_args: dict[str, str] = field(default_factory=dict)
    limit: float | None = None
    batch_size: int | str = 1  # or "auto": the runner finds the largest batch that fits
    prep_workers: int | None = None  # host-side preparation processes; None: omnibench.prep.default_workers
    device: str = "cpu"
    dtype: str = "auto"
    seed: int = 0
    output_path: str = "results"
    log_samples: bool = False
    log_samples_suffix: str | None = None
    gen_kwargs: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    overwrite: bool = False
    argv: list[str] | None = None  # the command line as given (for the manifest); None: this process's

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_hash(model_config: dict[str, Any], seed: int) -> str:
    """Identifies everything that changes a model's answers: its resolved config and the seed."""
    blob = json.dumps({"model": model_config, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
