"""`run_speed.py`: flags over the speed sweep (omnibench.speed) and its reports."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omnibench.config import parse_kv, scoped_args
from omnibench.manifest import build_manifest
from omnibench.protocol import ModelAdapter, OmnibenchError
from omnibench.registry import get_model_class
from omnibench.speed import DEFAULT_LENGTHS, SweepConfig, as_dict, run_sweep
from omnibench.speed_report import record_run, write_reports


def parse_args(argv: list[str]) -> SweepConfig:
    p = argparse.ArgumentParser(prog="run_speed.py", description=__doc__)
    p.add_argument("--models", default="omnimamba,showo,janusflow")
    p.add_argument("--modes", default="best", help="comma list of as_published, best")
    p.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)), help="context lengths in tokens")
    p.add_argument("--max-len", type=int, default=None, help="drop lengths above this")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--preset", default="full", help="full (random weights, full size), tiny, or a checkpoint: "
                   "pretrained=<path> is taken from --model_args")
    p.add_argument("--model_args", default="", help="k=v,... for every model or <model>.k=v for one "
                   "(e.g. omnimamba.cfg_scale=3)")
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--warmup-steps", type=int, default=4, help="untimed decode steps before the timed ones")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--point-timeout", type=float, default=300.0, help="seconds per point before it is recorded as timeout")
    p.add_argument("--full-budget", type=float, default=60.0,
                   help="measure the whole forced generation when its estimate is under this many seconds")
    p.add_argument("--image-batch", type=int, default=16)
    p.add_argument("--output-dir", default="reports/speed")
    p.add_argument("--report-only", action="store_true", help="render reports from the finished points; measure nothing")
    p.add_argument("--gpu", default=None, help="with --report-only: whose points to report (e.g. 'NVIDIA H100 80GB HBM3')")
    a = p.parse_args(argv)
    lengths = sorted({int(x) for x in a.lengths.split(",") if x.strip()})
    if a.max_len is not None:
        lengths = [n for n in lengths if n <= a.max_len] or [a.max_len]
    if not lengths or lengths[0] < 2:
        raise OmnibenchError(f"--lengths {a.lengths} has no usable length (each must be at least 2 tokens)")
    modes = [m for m in a.modes.split(",") if m]
    bad = [m for m in modes if m not in ("as_published", "best")]
    if bad:
        raise OmnibenchError(f"unknown mode '{bad[0]}' (known: as_published, best)")
    return SweepConfig(models=[m for m in a.models.split(",") if m], modes=modes, lengths=lengths, device=a.device,
                       dtype=a.dtype, preset=a.preset, decode_steps=a.decode_steps, warmup_steps=a.warmup_steps, repeats=a.repeats,
                       point_timeout_s=a.point_timeout, full_generation_budget_s=a.full_budget,
                       image_batch=a.image_batch, output_dir=a.output_dir,
                       model_args=parse_kv(a.model_args, "--model_args"), report_only=a.report_only, gpu=a.gpu)


def registry_factory(cfg: SweepConfig):
    def build(model: str, mode: str) -> ModelAdapter:
        cls = get_model_class(model)
        if not hasattr(cls, "prefill") or not hasattr(cls, "decode_step"):
            raise OmnibenchError(f"model '{model}' has no prefill/decode_step for the speed sweep")
        return cls(device=cfg.device, dtype=cfg.dtype, **{"preset": cfg.preset, "mode": mode,
                                                            **scoped_args(model, cfg.model_args)})
    return build


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse_args(argv)
        for model in cfg.models:
            get_model_class(model)  # unknown names fail before anything runs
        if not cfg.report_only:
            record_run(Path(cfg.output_dir), build_manifest(as_dict(cfg), argv=["run_speed.py", *argv]))
        points = run_sweep(cfg, registry_factory(cfg))
        if not points:
            raise OmnibenchError(f"no finished points for this sweep in {cfg.output_dir}")
    except OmnibenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths = write_reports(points, build_manifest(as_dict(cfg), argv=["run_speed.py", *argv]), Path(cfg.output_dir))
    print(f"report: {paths['md']}\njson:   {paths['json']}")
    return 0
