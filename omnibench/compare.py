"""Compare two results.json files metric by metric; exit 1 when a headline metric regressed by more than
the tolerance (for CI dashboards).

    python -m omnibench.compare baseline.json candidate.json --tolerance 0.5
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

# Metrics where a smaller number is better; everything else is higher-is-better, except ratios that
# describe behaviour rather than quality (yes_ratio), which are shown but never flagged.
LOWER_IS_BETTER = ("*fid*",)
NEUTRAL = ("*yes_ratio*",)


def _load(path: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: cannot read results file {path}: {exc}") from None


def compare(base: dict[str, Any], cand: dict[str, Any], tolerance: float,
            patterns: list[str] | None = None) -> tuple[pd.DataFrame, bool]:
    """Rows (task, metric, base, candidate, delta, status); the flag is True when anything regressed.
    Checked metrics: those matching `patterns`, else each task's headline metric. Deltas are in the
    metric's own unit (fractions for accuracies, points for MME)."""
    rows, regressed = [], False
    for task in sorted(set(base["results"]) & set(cand["results"])):
        head = base.get("headline", {}).get(task, {}).get("metric")
        for metric in sorted(set(base["results"][task]) & set(cand["results"][task])):
            b, c = base["results"][task][metric], cand["results"][task][metric]
            checked = any(fnmatch.fnmatch(metric, p) for p in patterns) if patterns else metric == head
            delta = c - b
            sign = -1 if any(fnmatch.fnmatch(metric, p) for p in LOWER_IS_BETTER) else 1
            status = ""
            if checked and not any(fnmatch.fnmatch(metric, p) for p in NEUTRAL):
                status = "REGRESSION" if sign * delta < -tolerance else "ok"
                regressed |= status == "REGRESSION"
            rows.append({"task": task, "metric": metric, "base": b, "candidate": c, "delta": delta,
                         "status": status})
    for task in sorted(set(base["results"]) - set(cand["results"])):
        rows.append({"task": task, "metric": "(task missing)", "base": None, "candidate": None,
                     "delta": None, "status": "REGRESSION"})
        regressed = True
    return pd.DataFrame(rows, columns=["task", "metric", "base", "candidate", "delta", "status"]), regressed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnibench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("candidate")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="allowed drop in the metric's own unit before it counts as a regression")
    parser.add_argument("--metrics", default=None,
                        help="comma list of metric name patterns to check (default: each task's headline metric)")
    args = parser.parse_args(argv)
    patterns = [p for p in args.metrics.split(",") if p] if args.metrics else None
    table, regressed = compare(_load(args.base), _load(args.candidate), args.tolerance, patterns)
    print(table.to_markdown(index=False, floatfmt=".4f") if len(table) else "no common metrics")
    if regressed:
        print(f"regression beyond tolerance {args.tolerance}", file=sys.stderr)
    return 1 if regressed else 0


if __name__ == "__main__":
    sys.exit(main())
