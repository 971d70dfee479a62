"""`run_eval.py`: lmms-eval's flags over the omnibench runner."""
from __future__ import annotations

import argparse
import re
import sys

from omnibench.config import (RunConfig, check_at_least, check_device, parse_gen_kwargs, parse_kv, parse_limit,
                              resolve_aliases)
from omnibench.errors import VERBOSITY, cli_main
from omnibench.protocol import OmnibenchError



class OneLineParser(argparse.ArgumentParser):
    """argparse whose mistakes are OmnibenchErrors: one line, printed and counted like every other."""

    def error(self, message: str):
        raise OmnibenchError(f"{message} (see {self.prog} --help)")


def batch_size(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    if text.strip().lower().startswith("auto"):
        raise argparse.ArgumentTypeError(f"{text!r} is not supported (lmms-eval's auto:N re-detects N times): give "
                                         "auto or a number")
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="run_eval.py", description="Evaluate a unified multimodal model.")
    p.add_argument("--model", default=None, help="model adapter name (e.g. omnimamba, hf; see --tasks list)")
    p.add_argument("--model_args", default="", help="k=v,... e.g. pretrained=<hub id or local dir> or preset=tiny; "
                   "'help' lists the model's arguments")
    p.add_argument("--tasks", default=None, help="comma list of tasks, or 'list' to print the registry")
    p.add_argument("--task_args", default="", help="k=v,... for every task that takes k, or <task>.k=v for one "
                   "(source=<hub id or local copy>, config=..., split=..., sample=true for the built-in offline sample); "
                   "'help' lists the tasks' arguments")
    p.add_argument("--limit", default=None, help="first N samples of each task, or a fraction in (0, 1)")
    p.add_argument("--batch_size", type=batch_size, default=1, help="samples per batch: a number, or auto (the "
                   "largest that fits, from 64 down, halved on out-of-memory)")
    p.add_argument("--prep_workers", type=int, default=None, help="processes that resize images and tokenize "
                   "the next batch while the model answers this one (default: up to 8 on a GPU, 0 on CPU; 0: "
                   "in the main process); for an image task, the threads that write a batch's images. Answers do not "
                   "depend on it")
    p.add_argument("--gen_kwargs", default="", help="generation settings for every task, as lmms-eval: "
                   "max_new_tokens=N (greedy decoding only)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_path", default="results", help="folder for <model>_<config hash>/ run folders")
    p.add_argument("--log_samples", action="store_true", help="write samples_<task>.jsonl")
    p.add_argument("--log_samples_suffix", default=None, help="samples files are samples_<task>_<suffix>.jsonl")
    p.add_argument("--resume", action="store_true", help="continue a run: finished samples are not re-run")
    p.add_argument("--overwrite", action="store_true", help="discard a previous run of the same config "
                   "(once the new one has loaded its model)")
    p.add_argument("--verbosity", default="INFO", type=str.upper, choices=VERBOSITY,
                   help="log level; DEBUG also shows the traceback of an error")
    return p


def parse_config(argv: list[str]) -> RunConfig | None:
    """The run configuration, or None when the command only prints (`--tasks list`, `help`)."""
    from omnibench.args import help_text
    from omnibench.registry import get_model_class, get_task_class, model_names, task_names

    args = build_parser().parse_args(argv)
    if args.tasks == "list":
        from omnibench.tasks import ALIASES
        print("tasks: " + ", ".join(task_names()))
        print("lmms-eval names: " + ", ".join(f"{a} = {t} {' '.join(f'{k}={v}' for k, v in fixed.items())}"
                                              for a, (t, fixed) in sorted(ALIASES.items())))
        print("models: " + ", ".join(model_names()))
        return None
    if args.model is not None and args.model_args.strip() == "help":
        print(help_text(f"model {args.model}", get_model_class(args.model).ARGS, "--model_args"))
        return None
    if args.tasks is None:
        raise OmnibenchError("--tasks is required: a comma list of tasks (see --tasks list)")
    tasks, task_args = resolve_aliases([t.strip() for t in args.tasks.split(",") if t.strip()],
                                       parse_kv(args.task_args if args.task_args.strip() != "help" else "", "--task_args"))
    if args.task_args.strip() == "help":
        for name in tasks:
            print(help_text(f"task {name}", get_task_class(name).ARGS, "--task_args"))
        return None
    if args.model is None:
        raise OmnibenchError("--model is required (see --tasks list for the known models)")
    if args.batch_size != "auto":
        check_at_least("--batch_size", args.batch_size, 1)
    if args.prep_workers is not None:
        check_at_least("--prep_workers", args.prep_workers, 0)
    if not tasks:
        raise OmnibenchError("--tasks is empty: give a comma list of tasks (see --tasks list)")
    if args.resume and args.overwrite:
        raise OmnibenchError("--resume and --overwrite contradict each other: pick one")
    if args.device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = check_device(args.device)
    if args.log_samples_suffix is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", args.log_samples_suffix):
        raise OmnibenchError(f"--log_samples_suffix {args.log_samples_suffix!r}: use letters, digits, '.', '_' or '-'")
    return RunConfig(model=args.model, model_args=parse_kv(args.model_args, "--model_args"), tasks=tasks,
                     task_args=task_args, limit=parse_limit(args.limit), gen_kwargs=parse_gen_kwargs(args.gen_kwargs),
                     log_samples_suffix=args.log_samples_suffix,
                     batch_size=args.batch_size, prep_workers=args.prep_workers, device=device, dtype=args.dtype, seed=args.seed,
                     output_path=args.output_path, log_samples=args.log_samples, resume=args.resume,
                     overwrite=args.overwrite)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The level is needed before the command line is known to be valid: read it leniently here; a bad
    # value is then reported by the full parse, as one line.
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--verbosity", type=str.upper, default="INFO")
    verbosity = early.parse_known_args(argv)[0].verbosity
    return cli_main(lambda: _run(argv), verbosity if verbosity in VERBOSITY else "INFO")


def _run(argv: list[str]) -> int:
    from omnibench.runner import Runner

    cfg = parse_config(argv)
    if cfg is None:
        return 0
    cfg.argv = ["run_eval.py", *argv]
    out = Runner(cfg).run()
    if out is not None:
        for task, metrics in out["results"].items():
            head = out["headline"][task]
            print(f"{task}: {head['metric']} = {metrics.get(head['metric'])}  ({out['n_samples'][task]})")
        for warning in out["warnings"]:
            print(f"warning: {warning}")
        print(f"results: {out['output_dir']}/results.json\nreport:  {out['output_dir']}/report.md")
    return 0
