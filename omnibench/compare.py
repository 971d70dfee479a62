"""The regression gate: compare a candidate run with a baseline, for CI.

    python -m omnibench.compare base/results.json new/results.json [--junit gate.xml]
    python -m omnibench.compare base/speed.json new/speed.json

Two results.json files (run_eval.py): the run fails (exit 1) when the task sets differ, a task scored a
different number of samples or different data (unless --allow-data-change), more than --max-failed-rate
of a task's samples failed, a headline metric is missing or not a finite number, or it moved the wrong
way by more than its tolerance (declared by the task in the metric's own unit; `--tolerance
metric=value` overrides one, `--tolerance X` all) and, where both runs kept per-sample records, by more
than noise (a paired bootstrap; the table shows its interval). Two speed.json files (run_speed.py):
decode ms/token, prefill, images/s and peak memory of each point, with a relative tolerance; points
measured on different GPUs are not compared. Prints Markdown tables (for $GITHUB_STEP_SUMMARY), one
stderr line per failed check naming the check and what to do, and with --junit a JUnit XML report.
A bad file or flag exits 2.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from omnibench import paired as paired_mod
from omnibench.cache import atomic_write_text
from omnibench.errors import add_verbosity_flag, cli_main
from omnibench.protocol import OmnibenchError

# For results files written before tasks declared each metric's direction (`directions`): smaller is
# better for these, and these describe behaviour rather than quality, shown but never flagged.
LOWER_IS_BETTER = ("*fid*",)
NEUTRAL = ("*yes_ratio*",)
FAILED = ("REGRESSION", "MISSING", "INVALID")
MAX_FAILED_RATE = 0.01
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
               int: "a number", float: "a number"}
GIB = 1024 ** 3
# Speed metrics: (column, point key, factor to the column's unit, which way is better, default relative tolerance).
SPEED_METRICS = (("decode_ms_per_token", "decode_seconds_per_token", 1e3, "lower", 0.10),
                 ("prefill_s", "prefill_seconds", 1.0, "lower", 0.10),
                 ("images_per_s", "images_per_second", 1.0, "higher", 0.10),
                 ("samples_per_s", "samples_per_second", 1.0, "higher", 0.10),
                 ("peak_memory_gib", "peak_memory_bytes_torch", 1 / GIB, "lower", 0.05))
# What makes two speed points the same measurement (the GPU is checked, not matched); `workload` names an
# evaluation-throughput point's benchmark shape.
SPEED_KEY = ("kind", "model", "mode", "length", "preset", "dtype", "device", "model_args", "workload")


@dataclass
class Finding:
    """One check of the gate: which, on what, whether it passed, and if not why and what to do."""

    check: str
    subject: str
    ok: bool
    detail: str = ""
    fix: str = ""

    def line(self) -> str:
        return f"error: {self.check}: {self.subject}: {self.detail}" + (f"; {self.fix}" if self.fix else "")


# ----------------------------------------------------------------------------- loading

def read_json(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise OmnibenchError(f"cannot read results file {path}: {exc.strerror or exc} ({what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OmnibenchError(f"{path} is not JSON ({exc}): {what}") from None


def is_speed_report(data: Any) -> bool:
    return isinstance(data, dict) and "points" in data and "results" not in data


def load_results(path: str, data: Any = None) -> dict[str, Any]:
    """A results.json written by run_eval.py, checked far enough that comparing it cannot crash."""
    if data is None:
        data = read_json(path, "give the path of a results.json written by run_eval.py")
    if is_speed_report(data):
        raise OmnibenchError(f"{path} is a speed report written by run_speed.py, not a results.json; compare "
                             "two results.json files (run_eval.py) or two speed.json files (run_speed.py)")
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


def load_speed(path: str, data: Any) -> dict[str, Any]:
    """A speed.json written by run_speed.py, checked far enough that comparing it cannot crash."""
    points = data.get("points")
    if not isinstance(points, list) or not all(isinstance(p, dict) and all(k in p for k in ("kind", "model", "mode"))
                                               for p in points):
        raise OmnibenchError(f"{path} is not a speed report: 'points' must be a list of points with kind, "
                             f"model and mode (as run_speed.py writes them)")
    return data


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------- results: declarations

def direction(data: dict[str, Any], task: str, metric: str) -> str:
    """"higher", "lower" or "neutral", as the task that wrote `data` declared it."""
    declared = data.get("directions", {}).get(task, {}).get(metric) if isinstance(data.get("directions"), dict) else None
    if declared in ("higher", "lower", "neutral"):
        return declared
    if any(fnmatch.fnmatch(metric, p) for p in NEUTRAL):
        return "neutral"
    return "lower" if any(fnmatch.fnmatch(metric, p) for p in LOWER_IS_BETTER) else "higher"


def _task_class(task: str):
    from omnibench import registry
    try:
        return registry.get_task_class(task)
    except OmnibenchError:
        return None


def declared_tolerance(data: dict[str, Any], task: str, metric: str) -> float | None:
    """The tolerance the task declared for `metric` (written in results.json; for an older file, the
    registered task's declaration)."""
    declared = data.get("tolerances", {}).get(task, {}).get(metric) if isinstance(data.get("tolerances"), dict) else None
    if finite(declared):
        return float(declared)
    cls = _task_class(task)
    return cls.tolerance(metric) if cls is not None else None


@dataclass
class Tolerances:
    """How far each metric may move the wrong way: `per_metric` (--tolerance metric=value) first, then
    `overall` (--tolerance X), then what the task declared, else none."""

    overall: float | None = None
    per_metric: dict[str, float] | None = None

    def get(self, base: dict[str, Any], task: str, metric: str) -> float:
        if self.per_metric and metric in self.per_metric:
            return self.per_metric[metric]
        if self.overall is not None:
            return self.overall
        declared = declared_tolerance(base, task, metric)
        return 0.0 if declared is None else declared


def _checked(metric: str, head: str | None, patterns: list[str] | None, way: str = "higher") -> bool:
    if way == "neutral":
        return False
    return any(fnmatch.fnmatch(metric, p) for p in patterns) if patterns else metric == head


# ----------------------------------------------------------------------------- results: checks

def _data_identity(fingerprint: Any) -> Any:
    """What says which data was evaluated, without where it was stored: `source` (a hub id or a local
    path) is left out, and so is `datasets`' path-dependent `fingerprint` where a content digest exists."""
    if isinstance(fingerprint, dict):
        drop = {"source"} | ({"fingerprint"} if "content_sha256" in fingerprint else set())
        return {k: _data_identity(v) for k, v in fingerprint.items() if k not in drop}
    return fingerprint


def _data_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            diff = _data_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return ""
    short = lambda v: (v[:12] + "...") if isinstance(v, str) and len(v) > 15 else v  # noqa: E731
    return "" if a == b else f"{prefix.rstrip('.')} {short(a)!r} -> {short(b)!r}"


def run_checks(base: dict[str, Any], cand: dict[str, Any], max_failed_rate: float = MAX_FAILED_RATE,
               allow_data_change: bool = False) -> list[Finding]:
    """The checks that make two runs comparable at all: same tasks, same samples, same data, few failures."""
    out = []
    for task in sorted(set(base["results"]) - set(cand["results"])):
        out.append(Finding("task set", task, False, "in the base but not in the candidate",
                           "run the candidate with the same --tasks as the base"))
    for task in sorted(set(cand["results"]) - set(base["results"])):
        out.append(Finding("task set", task, False, "in the candidate but not in the base",
                           "compare against a base that ran it too, or leave it out of --tasks"))
    for task in sorted(set(base["results"]) & set(cand["results"])):
        counts = [(data.get("n_samples") or {}).get(task) for data in (base, cand)]
        totals = [c.get("total") if isinstance(c, dict) else None for c in counts]
        if all(isinstance(t, int) for t in totals):
            same = totals[0] == totals[1]
            out.append(Finding("sample count", task, same, "" if same else
                               f"the candidate scored {totals[1]} samples, the base {totals[0]}",
                               "" if same else "run both on the same samples (same --limit and split)"))
        prints = [(data.get("manifest") or {}).get("datasets", {}).get(task) for data in (base, cand)]
        if all(p is not None for p in prints):
            diff = _data_difference(_data_identity(prints[0]), _data_identity(prints[1]))
            if not diff:
                out.append(Finding("dataset", task, True))
            elif allow_data_change:
                out.append(Finding("dataset", task, True, f"data changed ({diff}), allowed by --allow-data-change"))
            else:
                out.append(Finding("dataset", task, False, f"evaluated on different data ({diff})",
                                   "compare runs on the same dataset, or pass --allow-data-change if the "
                                   "change is intended"))
        for side, count in (("base", counts[0]), ("candidate", counts[1])):
            if not isinstance(count, dict) or not isinstance(count.get("failed"), int) or not count.get("total"):
                continue
            rate = count["failed"] / count["total"]
            ok = rate <= max_failed_rate
            out.append(Finding("failed samples", f"{task} ({side})", ok, "" if ok else
                               f"{count['failed']} of {count['total']} samples failed ({rate:.1%} > "
                               f"--max-failed-rate {max_failed_rate:.1%})",
                               "" if ok else f"see the error of each failed sample in samples_{task}.jsonl, fix "
                               "the cause and re-run with --resume (or raise --max-failed-rate)"))
    return out


def compare(base: dict[str, Any], cand: dict[str, Any], tolerance: float | Tolerances | None = None,
            patterns: list[str] | None = None, paired: dict[str, paired_mod.Paired | str] | None = None
            ) -> tuple[pd.DataFrame, bool]:
    """Rows (task, metric, base, candidate, delta, tolerance, ci, status, note) for the tasks both files
    have; the flag is True when a checked metric failed. Checked metrics: those matching `patterns`, else
    each task's headline metric. A checked metric fails when it is missing (a headline metric: from either
    file), is not a finite number in either file, or moved the wrong way by more than its tolerance and,
    where `paired` holds an interval for the task's headline, by more than noise (the interval lies
    wholly on the worse side of zero). Deltas are in the metric's own unit."""
    tolerances = tolerance if isinstance(tolerance, Tolerances) else Tolerances(overall=tolerance)
    paired = paired or {}
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
            delta = c - b if finite(b) and finite(c) else None
            status, note, tol, ci = "", "", None, ""
            if _checked(metric, head, patterns, way.get(metric, "higher")):
                kind = "headline metric" if metric == head else "checked metric"
                tol = tolerances.get(base, task, metric)
                missing = [side for side, m in (("base", b_metrics), ("candidate", c_metrics)) if metric not in m]
                invalid = [f"the {side}'s value {json.dumps(v)} is not a finite number"
                           for side, v in (("base", b), ("candidate", c)) if not finite(v)]
                test = paired.get(task) if metric == head else None
                if isinstance(test, paired_mod.Paired):
                    ci = test.interval()
                elif isinstance(test, str):
                    ci = "n/a"
                if missing:
                    status, note = "MISSING", f"{kind} missing from the {' and '.join(missing)}"
                elif invalid:
                    status, note = "INVALID", "; ".join(invalid) + f" (a {kind} must be a number in both files)"
                else:
                    lower = way.get(metric) == "lower"
                    worse = delta if lower else -delta
                    status = "ok"
                    if worse > tol:
                        moved = f"{'rose' if lower else 'dropped'} by {worse:.4g} (tolerance {tol:g}"
                        if isinstance(test, paired_mod.Paired) and not test.significant(way[metric]):
                            note = f"{moved}), within noise: the 95% interval {ci} of the change includes 0"
                        else:
                            status = "REGRESSION"
                            note = moved + (f", 95% interval {ci})" if isinstance(test, paired_mod.Paired) else ")")
                    if isinstance(test, str) and not note:
                        note = f"no paired test: {test}"
            rows.append({"task": task, "metric": metric, "base": b, "candidate": c, "delta": delta,
                         "tolerance": tol, "95% CI (paired)": ci, "status": status, "note": note})
    # object columns: a null stays None instead of turning into NaN
    table = pd.DataFrame(rows, columns=["task", "metric", "base", "candidate", "delta", "tolerance",
                                        "95% CI (paired)", "status", "note"], dtype=object)
    return table, bool(table["status"].isin(FAILED).any())


def metric_findings(table: pd.DataFrame) -> list[Finding]:
    out = []
    for task, metric, status, note in zip(table["task"], table["metric"], table["status"], table["note"]):
        if not status:
            continue
        subject = f"{task}/{metric}"
        if status in ("MISSING", "INVALID"):
            out.append(Finding("headline", subject, False, note,
                               "re-run the run that lacks it (an aggregate that failed or a task that scored nothing)"))
        elif status == "REGRESSION":
            out.append(Finding("regression", subject, False, note,
                               f"find the change that caused it, or allow it with --tolerance {metric}=<amount>"))
        else:
            out.append(Finding("regression", subject, True, note))
    return out


def paired_tests(base_path: str, cand_path: str, base: dict[str, Any], cand: dict[str, Any]
                 ) -> dict[str, paired_mod.Paired | str]:
    """Per task both files have, the paired interval of its headline's change, or why there is none."""
    out: dict[str, paired_mod.Paired | str] = {}
    for task in sorted(set(base["results"]) & set(cand["results"])):
        head = base.get("headline", {}).get(task, {}).get("metric")
        values = [data["results"][task].get(head) for data in (base, cand)]
        cls = _task_class(task)
        if not head or cls is None or not all(finite(v) for v in values):
            continue
        samples = [paired_mod.run_samples(Path(p), d, task) for p, d in ((base_path, base), (cand_path, cand))]
        if any(s is None for s in samples):
            out[task] = "per-sample records not found beside both files (run with --log_samples)"
        else:
            out[task] = paired_mod.paired_test(cls, samples[0], samples[1], values[0], values[1])
    return out


# ----------------------------------------------------------------------------- speed

def _point_key(p: dict[str, Any]) -> tuple:
    return tuple(p.get(k) for k in SPEED_KEY)


def _point_name(p: dict[str, Any]) -> str:
    where = (f"{p.get('length')} tokens" if p.get("kind") == "context" else
             f"{p.get('kind')}/{p['workload']}" if p.get("workload") else p.get("kind"))
    return f"{p['model']}/{p['mode']}/{where}"


def compare_speed(base: dict[str, Any], cand: dict[str, Any], tolerances: Tolerances) -> tuple[pd.DataFrame, list[Finding]]:
    """Every finished point of the base against the same point of the candidate: each speed metric may
    get worse by its relative tolerance; a point the candidate did not finish fails. Points measured on
    different GPUs are refused."""
    cand_points = {_point_key(p): p for p in cand["points"]}
    rows, findings = [], []
    for b in sorted((p for p in base["points"] if p.get("status") == "ok"), key=lambda p: tuple(map(str, _point_key(p)))):
        name = _point_name(b)
        c = cand_points.get(_point_key(b))
        if c is None or c.get("status") != "ok":
            detail = "not measured by the candidate" if c is None else f"the candidate's point is {c.get('status')}"
            findings.append(Finding("speed point", name, False, detail + (f" ({c['reason']})" if c and c.get("reason") else ""),
                                    "measure the same points (same --models, --modes, --lengths) and fix what failed"))
            continue
        if b.get("gpu") != c.get("gpu"):
            raise OmnibenchError(f"cannot compare speed measured on different GPUs: {name} on {b.get('gpu')!r} in the "
                                 f"base and {c.get('gpu')!r} in the candidate; measure both on the same GPU model")
        for column, key, factor, way, default in SPEED_METRICS:
            bv, cv = b.get(key), c.get(key)
            if not (finite(bv) and finite(cv)) or bv <= 0:
                continue
            tol = (tolerances.per_metric or {}).get(column, tolerances.overall if tolerances.overall is not None else default)
            change = (cv - bv) / bv
            worse = change if way == "lower" else -change
            ok = worse <= tol
            note = "" if ok else f"{worse:.1%} worse ({bv * factor:.4g} -> {cv * factor:.4g}; tolerance {tol:.0%})"
            rows.append({"point": name, "metric": column, "base": bv * factor, "candidate": cv * factor,
                         "change": f"{change:+.1%}", "tolerance": f"{tol:.0%}", "gpu": b.get("gpu"),
                         "status": "ok" if ok else "REGRESSION", "note": note})
            findings.append(Finding("speed", f"{name}/{column}", ok, note,
                                    "" if ok else f"find the change that caused it, or allow it with --tolerance {column}=<fraction>"))
    if not rows and not findings:
        raise OmnibenchError("nothing to check: the base speed report has no finished point")
    table = pd.DataFrame(rows, columns=["point", "metric", "base", "candidate", "change", "tolerance", "gpu",
                                        "status", "note"], dtype=object)
    return table, findings


# ----------------------------------------------------------------------------- output

def _cell(data: dict[str, Any], task: str, metric: str) -> Any:
    metrics = data["results"].get(task, {})
    if metric not in metrics:
        return "(missing)"
    return metrics[metric] if finite(metrics[metric]) else json.dumps(metrics[metric])


def _metric_names(*files: dict[str, Any]) -> set[str]:
    return {m for data in files for metrics in data["results"].values() for m in metrics}


def checks_table(findings: list[Finding]) -> str:
    frame = pd.DataFrame([{"check": f.check, "subject": f.subject, "status": "ok" if f.ok else "FAILED",
                           "detail": f.detail} for f in findings], columns=["check", "subject", "status", "detail"])
    return frame.to_markdown(index=False) if len(frame) else "(no checks)"


def junit_xml(findings: list[Finding], suite: str) -> str:
    """One test case per check (class: the check, name: what it checked), a failure for each that failed."""
    root = ET.Element("testsuites")
    node = ET.SubElement(root, "testsuite", name=suite, tests=str(len(findings)),
                         failures=str(sum(not f.ok for f in findings)), errors="0")
    for f in findings:
        case = ET.SubElement(node, "testcase", classname=f"{suite}.{f.check.replace(' ', '_')}", name=f.subject)
        if not f.ok:
            failure = ET.SubElement(case, "failure", message=f"{f.check}: {f.detail}", type=f.check)
            failure.text = f.line()
        elif f.detail:
            ET.SubElement(case, "system-out").text = f.detail
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _parse_tolerances(values: list[str]) -> Tolerances:
    out = Tolerances(per_metric={})
    for value in values:
        name, sep, amount = value.rpartition("=")
        try:
            number = float(amount)
        except ValueError:
            raise OmnibenchError(f"--tolerance {value!r}: give a number or metric=number (e.g. mme_perception=20)") from None
        if not (math.isfinite(number) and number >= 0):
            raise OmnibenchError(f"--tolerance {value} must be a finite number >= 0 "
                                 "(the allowed drop in the metric's own unit; a fraction for speed metrics)")
        if sep and not name.strip():
            raise OmnibenchError(f"--tolerance {value!r} names no metric (metric=number)")
        if sep:
            out.per_metric[name.strip()] = number
        else:
            out.overall = number
    return out


def _results_run(args: argparse.Namespace, tolerances: Tolerances, base: dict[str, Any], cand: dict[str, Any]
                 ) -> tuple[str, list[Finding]]:
    patterns = None
    if args.metrics is not None:
        patterns = [p.strip() for p in args.metrics.split(",") if p.strip()]
        names = _metric_names(base, cand)
        unmatched = [p for p in patterns if not any(fnmatch.fnmatch(m, p) for m in names)]
        if not patterns or unmatched:
            problem = f"'{unmatched[0]}' matches no metric in either file" if patterns else "names no pattern"
            raise OmnibenchError(f"--metrics {args.metrics!r} {problem} "
                                 f"(metrics there: {', '.join(sorted(names)) or 'none'})")
    checks = run_checks(base, cand, args.max_failed_rate, args.allow_data_change)
    table, _ = compare(base, cand, tolerances, patterns, paired_tests(args.base, args.candidate, base, cand))
    if not table["status"].astype(bool).any() and not any(f.check == "task set" for f in checks):
        raise OmnibenchError("nothing to check: the base file has no headline metric for a task both files have "
                             "(name the metrics to check with --metrics, e.g. 'pope_*')")
    # Values that are not finite numbers are shown as the file has them (null, NaN, "text").
    shown = table.assign(**{col: [_cell(data, t, m) for t, m in zip(table["task"], table["metric"])]
                            for col, data in (("base", base), ("candidate", cand))})
    shown["tolerance"] = [("" if t is None else f"{t:g}") for t in table["tolerance"]]
    text = ("### Metrics\n\n" + shown.to_markdown(index=False, floatfmt=".4f") +
            "\n\n### Checks\n\n" + checks_table(checks) + "\n")
    return text, checks + metric_findings(table)


def run(args: argparse.Namespace) -> int:
    tolerances = _parse_tolerances(args.tolerance)
    if not (math.isfinite(args.max_failed_rate) and 0 <= args.max_failed_rate <= 1):
        raise OmnibenchError(f"--max-failed-rate {args.max_failed_rate} must be a fraction between 0 and 1")
    raw = [read_json(p, "give a results.json (run_eval.py) or a speed.json (run_speed.py)")
           for p in (args.base, args.candidate)]
    speed = [is_speed_report(d) for d in raw]
    if all(speed):
        base, cand = (load_speed(p, d) for p, d in zip((args.base, args.candidate), raw))
        table, findings = compare_speed(base, cand, tolerances)
        text = "### Speed\n\n" + (table.to_markdown(index=False, floatfmt=".4g") if len(table) else "(no common point)")
        text += "\n\n### Checks\n\n" + checks_table([f for f in findings if f.check != "speed"]) + "\n"
        suite = "omnibench.compare.speed"
    else:
        base, cand = (load_results(p, d) for p, d in zip((args.base, args.candidate), raw))
        text, findings = _results_run(args, tolerances, base, cand)
        suite = "omnibench.compare"
    print(text)
    if args.junit:
        atomic_write_text(Path(args.junit), junit_xml(findings, suite))
    failed = [f for f in findings if not f.ok]
    for f in failed:
        print(f.line(), file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnibench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the baseline's results.json or speed.json")
    parser.add_argument("candidate", help="the candidate's file of the same kind")
    parser.add_argument("--tolerance", action="append", default=[], metavar="[METRIC=]AMOUNT",
                        help="allowed move the wrong way before a regression: METRIC=AMOUNT for one metric, "
                             "AMOUNT for all (results: in the metric's own unit, default: the task's declaration; "
                             "speed: a fraction, default 0.10, memory 0.05); repeatable")
    parser.add_argument("--metrics", default=None,
                        help="comma list of metric name patterns to check (default: each task's headline metric)")
    parser.add_argument("--max-failed-rate", type=float, default=MAX_FAILED_RATE,
                        help=f"largest fraction of a task's samples that may fail (default {MAX_FAILED_RATE})")
    parser.add_argument("--allow-data-change", action="store_true",
                        help="pass although a task was evaluated on different data than the base")
    parser.add_argument("--junit", default=None, metavar="FILE", help="also write the checks as JUnit XML")
    add_verbosity_flag(parser)
    args = parser.parse_args(argv)  # argparse's own errors: usage, then "python -m omnibench.compare: error: ..."
    return cli_main(lambda: run(args), args.verbosity)


if __name__ == "__main__":
    sys.exit(main())
