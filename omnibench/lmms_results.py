"""A run's scores in lmms-eval's results.json schema, for places that take lmms-eval results.

Every run writes `lmms_eval_results.json` beside its results.json (listed in `exports`); older results
files convert with `python -m omnibench.lmms_results <run>/results.json [--out FILE]`.

The schema is what lmms-eval 0.7 writes (`evaluator.simple_evaluate` and `EvaluationTracker`):
`results` (task -> {"alias": task, "<metric>,none": value, "<metric>_stderr,none": "N/A"}, the filter
"none" as for a task without filters), `group_subtasks`, `configs`, `versions`, `n-shot`,
`higher_is_better`, `n-samples` ({"original", "effective"}), `config` (model, model_args, batch size,
device, limit, seeds), `git_hash`, `date`, `model_name`. The task and metric names are omnibench's and
the numbers its scorers' (which follow each benchmark's official scorer where lmms-eval departs from it,
see each task's docstring); `configs` says so and where each task's data came from.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from omnibench.cache import atomic_write_text
from omnibench.errors import add_verbosity_flag, cli_main

FILTER = "none"


def _model_args(args: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in args.items()) if isinstance(args, dict) else str(args or "")


def lmms_eval_results(results: dict[str, Any]) -> dict[str, Any]:
    """lmms-eval's results.json object for an omnibench results.json object."""
    manifest = results.get("manifest") or {}
    config = manifest.get("config") or {}
    identity = (manifest.get("identity") or {}).get("tasks") or {}
    directions = results.get("directions") or {}
    tasks = list(results["results"])
    created = manifest.get("created_utc")
    try:
        date = datetime.datetime.fromisoformat(created).strftime("%Y%m%d_%H%M%S")
    except (TypeError, ValueError):
        date = None
    out_results, configs, counts = {}, {}, {}
    for task in tasks:
        entry: dict[str, Any] = {"alias": task}
        for metric, value in sorted(results["results"][task].items()):
            entry[f"{metric},{FILTER}"] = value
            entry[f"{metric}_stderr,{FILTER}"] = "N/A"
        out_results[task] = entry
        dataset = (manifest.get("datasets") or {}).get(task) or {}
        args = (identity.get(task) or {}).get("args") or {}
        configs[task] = {"task": task, "dataset_path": dataset.get("source"), "test_split": args.get("split"),
                         "output_type": "generate_until", "num_fewshot": 0,
                         "metadata": {"version": (identity.get(task) or {}).get("scoring"),
                                      "harness": "omnibench", "task_args": args}}
        n = (results.get("n_samples") or {}).get(task) or {}
        counts[task] = {"original": n.get("available"), "effective": n.get("total")}
    model = results.get("model")
    commit = (manifest.get("git") or {}).get("commit")
    return {
        "results": out_results,
        "group_subtasks": {task: [] for task in tasks},
        "configs": configs,
        "versions": {task: (identity.get(task) or {}).get("scoring") for task in tasks},
        "n-shot": {task: 0 for task in tasks},
        # neutral metrics (a yes-ratio) are neither: lmms-eval writes null where a direction is undefined
        "higher_is_better": {task: {m: {"higher": True, "lower": False}.get(way) for m, way in
                                    (directions.get(task) or {}).items()} for task in tasks},
        "n-samples": counts,
        "config": {"model": model, "model_args": _model_args(config.get("model_args")),
                   "batch_size": config.get("batch_size"), "batch_sizes": [], "device": config.get("device"),
                   "use_cache": config.get("output_path"), "limit": config.get("limit"),
                   "bootstrap_iters": 0, "gen_kwargs": "", "random_seed": config.get("seed"),
                   "numpy_seed": config.get("seed"), "torch_seed": config.get("seed"), "fewshot_seed": None},
        "git_hash": commit[:7] if isinstance(commit, str) else commit,
        "date": date,
        "model_name": model,
        "model_name_sanitized": model,
        "warnings": results.get("warnings", []),
    }


def write(results: dict[str, Any], path: Path) -> Path:
    atomic_write_text(path, json.dumps(lmms_eval_results(results), indent=2, sort_keys=False, default=str) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    from omnibench.compare import load_results

    parser = argparse.ArgumentParser(prog="python -m omnibench.lmms_results", description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a results.json written by run_eval.py")
    parser.add_argument("--out", default=None, help="where to write (default: lmms_eval_results.json beside it)")
    add_verbosity_flag(parser)
    args = parser.parse_args(argv)

    def run() -> int:
        out = Path(args.out) if args.out else Path(args.results).with_name("lmms_eval_results.json")
        print(write(load_results(args.results), out))
        return 0
    return cli_main(run, args.verbosity)


if __name__ == "__main__":
    sys.exit(main())
