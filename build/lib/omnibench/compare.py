"""Compare two results.json files metric by metric; exit 1 when a headline metric regressed by more than
the tolerance, is missing, or is not a number (for CI dashboards); exit 2 on a bad file or flag.

    python -m omnibench.compare baseline.json candidate.json --tolerance 0.5
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from omnibench.errors import add_verbosity_flag, cli_main
from omnibench.protocol import OmnibenchError

# For results files written before tasks declared each metric's direction (`directions`): smaller is
# better for these, and these describe behaviour rather than quality, shown but never flagged.
LOWER_IS_BETTER = ("*fid*",)
NEUTRAL = ("*yes_ratio*",)
FAILED = ("REGRESSION", "MISSING", "INVALID")
TASK_MISSING = "(task missing)"
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
               int: "a number", float: "a number"}


def load_results(path: str) -> dict[str, Any]:
    """A results.json written by run_eval.py, checked far enough that comparing it cannot crash."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise OmnibenchError(f"cannot read results file {path}: {exc.strerror or exc} "
                             "(give the path of a results.json written by run_eval.py)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OmnibenchError(f"{path} is not JSON ({exc}): give a results.json written by run_eval.py") from None
    if isinstance(data, dict) and "points" in data and "results" not in data:
        raise OmnibenchError(f"{path} is a speed report written by run_speed.py, not a results.json; compare takes "
                             "the results.json files written by run_eval.py")
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        got = "an object without 'results'" if isinstance(data, dict) else _JSON_TYPES.get(type(data), "not an object")
        raise OmnibenchError(f"{path} is not a results.json: expected an object whose 'results' maps task -> "
                             f"metric -> value, got {got}")
    for task, metrics in data["results"].items():
        if not isinstance(metrics, dict):
            raise OmnibenchError(f"{path} is not a results.json: results['{task}'] is "
                                 f"{_JSON_TYPES.get(type(metrics), 'not an object')}, not a mapping of metric -> value")
    headline = data.get("headline", {})
    if not isinstance(headline, dict) or not all(isinstance(h, dict) for h in headline.values()):
        raise OmnibenchError(f"{path} is not a results.json: 'headline' must map task -> {{\"metric\": name}}")
    return data


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def direction(data: dict[str, Any], task: str, metric: str) -> str:
    """"higher", "lower" or "neutral", as the task that wrote `data` declared it."""
    declared = data.get("directions", {}).get(task, {}).get(metric) if isinstance(data.get("directions"), dict) else None
    if declared in ("higher", "lower", "neutral"):
        return declared
    if any(fnmatch.fnmatch(metric, p) for p in NEUTRAL):
        return "neutral"
    return "lower" if any(fnmatch.fnmatch(metric, p) for p in LOWER_IS_BETTER) else "higher"


def _checked(metric: str, head: str | None, patterns: list[str] | None, way: str = "higher") -> bool:
    if way == "neutral":
        return False
    return any(fnmatch.fnmatch(metric, p) for p in patterns) if patterns else metric == head


def compare(base: dict[str, Any], cand: dict[str, Any], tolerance: float,
            patterns: list[str] | None = None) -> tuple[pd.DataFrame, bool]:
    """Rows (task, metric, base, candidate, delta, status, note); the flag is True when anything failed.
    Checked metrics: those matching `patterns`, else each task's headline metric. A checked metric fails
    when it regressed beyond the tolerance, is missing from the candidate (a headline metric: from either
    file), or is not a finite number in either file. Deltas are in the metric's own unit (fractions for
    accuracies, points for MME)."""
    rows = []
    for task in sorted(set(base["results"]) & set(cand["results"])):
        b_metrics, c_metrics = base["results"][task], cand["results"][task]
        head = base.get("headline", {}).get(task, {}).get("metric")
        way = {m: direction(base, task, m) for m in set(b_metrics) | set(c_metrics)}
        shown = (set(b_metrics) & set(c_metrics)) | {m for m in b_metrics if _checked(m, head, patterns, way[m])}
        if head and _checked(head, head, patterns, way.get(head, "higher")):
            shown.add(head)
        for metric in sorted(shown):
            b, c = b_metrics.get(metric), c_metrics.get(metric)
            delta = c - b if _finite(b) and _finite(c) else None
            status, note = "", ""
            if _checked(metric, head, patterns, way.get(metric, "higher")):
                kind = "headline metric" if metric == head else "checked metric"
                missing = [side for side, m in (("base", b_metrics), ("candidate", c_metrics)) if metric not in m]
                invalid = [f"the {side}'s value {json.dumps(v)} is not a finite number"
                           for side, v in (("base", b), ("candidate", c)) if not _finite(v)]
                if missing:
                    status, note = "MISSING", f"{kind} missing from the {' and '.join(missing)}"
                elif invalid:
                    status, note = "INVALID", "; ".join(invalid) + f" (a {kind} must be a number in both files)"
                else:
                    lower = way.get(metric) == "lower"
                    worse = delta if lower else -delta
                    status = "REGRESSION" if worse > tolerance else "ok"
                    if status == "REGRESSION":
                        note = f"{'rose' if lower else 'dropped'} by {worse:.4g} (tolerance {tolerance:g})"
            rows.append({"task": task, "metric": metric, "base": b, "candidate": c, "delta": delta,
                         "status": status, "note": note})
    for task in sorted(set(base["results"]) - set(cand["results"])):
        rows.append({"task": task, "metric": TASK_MISSING, "base": None, "candidate": None,
                     "delta": None, "status": "REGRESSION", "note": "task missing from the candidate"})
    # object columns: a null stays None instead of turning into NaN
    table = pd.DataFrame(rows, columns=["task", "metric", "base", "candidate", "delta", "status", "note"], dtype=object)
    return table, bool(table["status"].isin(FAILED).any())


def _cell(data: dict[str, Any], task: str, metric: str) -> Any:
    metrics = data["results"].get(task, {})
    if metric not in metrics:
        return "" if metric == TASK_MISSING else "(missing)"
    return metrics[metric] if _finite(metrics[metric]) else json.dumps(metrics[metric])


def _metric_names(*files: dict[str, Any]) -> set[str]:
    return {m for data in files for metrics in data["results"].values() for m in metrics}


def run(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise OmnibenchError(f"--tolerance {args.tolerance} must be a finite number >= 0 "
                             "(the allowed drop in the metric's own unit)")
    base, cand = load_results(args.base), load_results(args.candidate)
    patterns = None
    if args.metrics is not None:
        patterns = [p.strip() for p in args.metrics.split(",") if p.strip()]
        names = _metric_names(base, cand)
        unmatched = [p for p in patterns if not any(fnmatch.fnmatch(m, p) for m in names)]
        if not patterns or unmatched:
            problem = f"'{unmatched[0]}' matches no metric in either file" if patterns else "names no pattern"
            raise OmnibenchError(f"--metrics {args.metrics!r} {problem} "
                                 f"(metrics there: {', '.join(sorted(names)) or 'none'})")
    table, failed = compare(base, cand, args.tolerance, patterns)
    if not table["status"].astype(bool).any():
        raise OmnibenchError("nothing to check: the base file has no headline metric for a task both files have "
                             "(name the metrics to check with --metrics, e.g. 'pope_*')")
    # Values that are not finite numbers are shown as the file has them (null, NaN, "text").
    shown = table.assign(**{col: [_cell(data, t, m) for t, m in zip(table["task"], table["metric"])]
                            for col, data in (("base", base), ("candidate", cand))})
    print(shown.to_markdown(index=False, floatfmt=".4f"))
    if failed:
        bad = table[table["status"].isin(FAILED)]
        notes = "; ".join(f"{t}/{m}: {n}" if m != TASK_MISSING else f"{t}: {n}"
                          for t, m, n in zip(bad["task"], bad["metric"], bad["note"]))
        # A missing or non-numeric value is a bad input, not a measured drop: it says so.
        prefix = "error: " if bad["status"].isin(("MISSING", "INVALID")).any() else \
            f"regression beyond tolerance {args.tolerance:g}: "
        print(prefix + notes, file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnibench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("candidate")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="allowed drop in the metric's own unit before it counts as a regression")
    parser.add_argument("--metrics", default=None,
                        help="comma list of metric name patterns to check (default: each task's headline metric)")
    add_verbosity_flag(parser)
    args = parser.parse_args(argv)  # argparse's own errors: usage, then "python -m omnibench.compare: error: ..."
    return cli_main(lambda: run(args), args.verbosity)


if __name__ == "__main__":
    sys.exit(main())
