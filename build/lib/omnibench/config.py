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
    batch_size: int = 1
    device: str = "cpu"
    dtype: str = "auto"
    seed: int = 0
    output_path: str = "results"
    log_samples: bool = False
    resume: bool = False
    overwrite: bool = False
    argv: list[str] | None = None  # the command line as given (for the manifest); None: this process's

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_hash(model_config: dict[str, Any], seed: int) -> str:
    """Identifies everything that changes a model's answers: its resolved config and the seed."""
    blob = json.dumps({"model": model_config, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
