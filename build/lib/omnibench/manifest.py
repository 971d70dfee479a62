"""The manifest stored in every result file: how to reproduce it and on what it ran."""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("omnibench", "torch", "transformers", "datasets", "numpy", "pillow", "pandas", "triton",
            "mamba-ssm", "causal-conv1d", "flash-attn", "torch-fidelity", "clean-fid", "lmms-eval")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "cpu_count": os.cpu_count()}
    try:
        import torch
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    try:
        import pynvml
        pynvml.nvmlInit()
        info["nvidia_driver"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # no NVML, no driver: nothing to record
        pass
    return info


def build_manifest(config: dict[str, Any], datasets: dict[str, Any] | None = None,
                   extra: dict[str, Any] | None = None, argv: list[str] | None = None) -> dict[str, Any]:
    """`argv`: the program and its arguments as the CLI parsed them (default: this process's)."""
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if argv is None else argv
    return {
        "argv": argv,
        "command": " ".join(["python", *argv]),
        "config": config,
        "seed": config.get("seed"),
        "packages": package_versions(),
        "git": git_commit(),
        "datasets": datasets or {},
        "hardware": hardware(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
