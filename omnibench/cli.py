"""`run_eval.py`: lmms-eval's flags over the omnibench runner."""
from __future__ import annotations

import argparse
import sys

from omnibench.config import RunConfig, check_at_least, check_device, parse_kv, parse_limit
from omnibench.protocol import OmnibenchError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_eval.py", description="Evaluate a unified multimodal model.")
    p.add_argument("--model", required=True, help="model adapter name (e.g. omnimamba, hf)")
    p.add_argument("--model_args", default="", help="k=v,... e.g. pretrained=<hub id or local dir> or preset=tiny")
    p.add_argument("--tasks", required=True, help="comma list of tasks, or 'list' to print the registry")
    p.add_argument("--task_args", default="", help="k=v,... for every task, or <task>.k=v for one "
                   "(data_dir=<local copy>, split=..., sample=true for the built-in offline sample)")
    p.add_argument("--limit", default=None, help="first N samples of each task, or a fraction in (0, 1)")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_path", default="results", help="folder for <model>_<config hash>/ run folders")
    p.add_argument("--log_samples", action="store_true", help="write samples_<task>.jsonl")
    p.add_argument("--resume", action="store_true", help="continue a run: finished samples are not re-run")
    p.add_argument("--overwrite", action="store_true", help="discard a previous run of the same config")
    return p


def parse_config(argv: list[str]) -> RunConfig | None:
    from omnibench.registry import model_names, task_names

    args = build_parser().parse_args(argv)
    if args.tasks == "list":
        print("tasks: " + ", ".join(task_names()))
        print("models: " + ", ".join(model_names()))
        return None
    check_at_least("--batch_size", args.batch_size, 1)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise OmnibenchError("--tasks is empty: give a comma list of tasks (see --tasks list)")
    if args.resume and args.overwrite:
        raise OmnibenchError("--resume and --overwrite contradict each other: pick one")
    if args.device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = check_device(args.device)
    return RunConfig(model=args.model, model_args=parse_kv(args.model_args, "--model_args"), tasks=tasks,
                     task_args=parse_kv(args.task_args, "--task_args"), limit=parse_limit(args.limit),
                     batch_size=args.batch_size, device=device, dtype=args.dtype, seed=args.seed,
                     output_path=args.output_path, log_samples=args.log_samples, resume=args.resume,
                     overwrite=args.overwrite)


def main(argv: list[str] | None = None) -> int:
    from omnibench.runner import Runner

    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse_config(argv)
        if cfg is None:
            return 0
        cfg.argv = ["run_eval.py", *argv]
        out = Runner(cfg).run()
    except OmnibenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if out is not None:
        from omnibench.runner import run_dir
        folder = run_dir(cfg, out["config_hash"])
        for task, metrics in out["results"].items():
            head = out["headline"][task]
            print(f"{task}: {head['metric']} = {metrics.get(head['metric'])}  ({out['n_samples'][task]})")
        print(f"results: {folder / 'results.json'}\nreport:  {folder / 'report.md'}")
    return 0
