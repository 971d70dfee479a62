"""Is a drop between two runs larger than noise? A paired bootstrap over the samples both runs scored.

Each task says how its headline metric decomposes into additive parts per resampling unit
(`Task.paired_parts`, e.g. (score, 1) per question for an accuracy, (tp, fp, fn, n) per split for POPE's
F1, per image for MME) and how the headline follows from their sums (`Task.headline_from_parts`). The
same resample of units is applied to both runs, so what varies between resamples is only which questions
are asked, and the interval of the difference says how much of the observed change those questions
explain. The resampling is seeded: a gate gives the same answer every time it runs on the same files.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from omnibench.cache import SampleCache
from omnibench.protocol import OmnibenchError, Task

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95


@dataclass
class Paired:
    """The observed change (candidate - base) of a headline metric and its bootstrap interval."""

    delta: float
    low: float
    high: float
    units: int

    def significant(self, direction: str) -> bool:
        """Whether the interval lies wholly on the worse side of zero."""
        return self.high < 0 if direction == "higher" else self.low > 0

    def interval(self) -> str:
        return f"[{self.low:+.4f}, {self.high:+.4f}]"


def paired_bootstrap(base: np.ndarray, cand: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray],
                     resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> tuple[float, float]:
    """The `level` percentile interval of statistic(candidate) - statistic(base) over `resamples` draws
    of the units with replacement, the same draw for both runs. `base` and `cand` are (units, parts)."""
    rng = np.random.default_rng(seed)
    n = len(base)
    chunk = max(1, min(resamples, 4_000_000 // max(n, 1)))  # bounds the (chunk, units) weight matrix
    deltas = []
    for start in range(0, resamples, chunk):
        weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n)
                            for _ in range(min(chunk, resamples - start))]).astype(float)
        deltas.append(statistic(weights @ cand) - statistic(weights @ base))
    d = np.concatenate(deltas)
    tail = 50 * (1 - level)
    low, high = np.percentile(d, [tail, 100 - tail])
    return float(low), float(high)


def run_samples(results_path: Path, results: dict[str, Any], task: str) -> list[tuple[str, dict[str, Any]]] | None:
    """(sample id, per-sample record) of every sample the results file scored for `task`, in order: from
    `samples_<task>.jsonl` beside it (--log_samples), else from the run folder's cache; None when neither
    is there (a results file copied out of its run folder, or a history file)."""
    folder = Path(results_path).parent
    logged = folder / f"samples_{task}.jsonl"
    if logged.is_file():
        rows = [json.loads(line) for line in logged.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [(r["sample_id"], r["record"]) for r in rows]
    total = (results.get("n_samples") or {}).get(task, {}).get("total")
    if not (folder / "cache").is_dir() or not results.get("config_hash") or not isinstance(total, int):
        return None
    try:
        done = SampleCache(folder / "cache", results["config_hash"], task).load()
    except OmnibenchError:
        return None
    # The run scored the first `total` docs (--limit); the cache may hold more from a longer run.
    rows = sorted((r for r in done.values() if isinstance(r.get("doc_index"), int) and r["doc_index"] < total),
                  key=lambda r: r["doc_index"])
    return [(r["sample_id"], r["record"]) for r in rows] if len(rows) == total else None


def _parts(task_cls: type[Task], samples: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, list[float]] | None:
    try:
        return task_cls.paired_parts(samples)
    except (KeyError, TypeError, ValueError):  # records of another shape (an older task version)
        return None


def paired_test(task_cls: type[Task], base: Sequence[tuple[str, dict[str, Any]]],
                cand: Sequence[tuple[str, dict[str, Any]]], base_value: float, cand_value: float) -> Paired | str:
    """The paired interval of the headline's change, or why there is none."""
    parts_b, parts_c = _parts(task_cls, base), _parts(task_cls, cand)
    if parts_b is None or parts_c is None:
        return "no per-sample scores for a paired test"
    if set(parts_b) != set(parts_c):
        return "the runs scored different samples"
    units = sorted(parts_b)
    b = np.array([parts_b[u] for u in units], dtype=float)
    c = np.array([parts_c[u] for u in units], dtype=float)
    statistic = task_cls.headline_from_parts
    # The records must give the numbers in the results files, or they are not what was scored.
    for side, parts, value in (("base", b, base_value), ("candidate", c, cand_value)):
        recomputed = float(statistic(parts.sum(axis=0)))
        if not math.isclose(recomputed, value, rel_tol=1e-6, abs_tol=1e-9):
            return f"the {side}'s per-sample records give {recomputed:.6g}, not its {value:.6g}"
    low, high = paired_bootstrap(b, c, statistic)
    return Paired(delta=cand_value - base_value, low=low, high=high, units=len(units))
