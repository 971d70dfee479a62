"""A static dashboard of runs over time: `python -m omnibench.dashboard RUNS... --out site/`.

RUNS are run folders, results.json or speed.json files, or folders holding them (searched below; a
run folder keeps every run as history/results_<time>.json). The page, `<out>/index.html` with its plots
as PNG files beside it (no server, no JavaScript, nothing fetched: it opens from disk), shows per model
and task the headline metric of every run by date and commit with the paper's number as a reference
line, the latest run of each configuration in the paper's tables, the speed and memory of the speed
reports over time, and the latest speed report's curves beside the paper's claims.
"""
from __future__ import annotations

import argparse
import datetime
import html
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from omnibench import compare, speed_report
from omnibench.cache import atomic_write_text
from omnibench.errors import add_verbosity_flag, cli_main
from omnibench.protocol import OmnibenchError
from omnibench.report import measured_rows, paper_layout_frame, paper_table

PLOTS = "plots"


@dataclass
class Entry:
    """One results.json (a run) or speed.json (a speed report), when and from which commit."""

    path: Path
    data: dict[str, Any]
    created: datetime.datetime
    commit: str

    @property
    def label(self) -> str:
        return f"{self.created:%Y-%m-%d %H:%M} {self.commit}"


def _created(data: dict[str, Any], path: Path) -> datetime.datetime:
    stamp = (data.get("manifest") or {}).get("created_utc")
    try:
        return datetime.datetime.fromisoformat(stamp).astimezone(datetime.timezone.utc)
    except (TypeError, ValueError):
        return datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)


def _commit(data: dict[str, Any]) -> str:
    git = (data.get("manifest") or {}).get("git") or {}
    commit = str(git.get("commit") or "?")
    return (commit[:8] if re.fullmatch(r"[0-9a-f]{40}", commit) else commit) + ("+dirty" if git.get("dirty") else "")


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise OmnibenchError(f"{path} does not exist: give run folders, results.json or speed.json files, "
                             "or folders that hold them")
    found = [*path.rglob("results.json"), *path.rglob("history/results_*.json"), *path.rglob("speed.json")]
    # A run that scored fewer samples than its folder's finished run is not part of its history.
    return sorted(p for p in found if "partial" not in p.relative_to(path).parts)


def collect(paths: list[str]) -> tuple[list[Entry], list[Entry]]:
    """(runs, speed reports) found under `paths`, each once, oldest first."""
    runs: dict[tuple, Entry] = {}
    speeds: dict[Path, Entry] = {}
    for given in paths:
        for path in _files(Path(given)):
            raw = compare.read_json(str(path), "give run folders, results.json or speed.json files")
            if compare.is_speed_report(raw):
                data = compare.load_speed(str(path), raw)
                speeds[path.resolve()] = Entry(path, data, _created(data, path), _commit(data))
            else:
                data = compare.load_results(str(path), raw)
                entry = Entry(path, data, _created(data, path), _commit(data))
                # results.json is also the newest file of its history: keep one of them.
                runs.setdefault((data.get("model"), data.get("config_hash"), entry.created.isoformat()), entry)
    if not runs and not speeds:
        raise OmnibenchError(f"no results.json, history/results_*.json or speed.json under {', '.join(paths)}")
    return sorted(runs.values(), key=lambda e: e.created), sorted(speeds.values(), key=lambda e: e.created)


def _norm(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def paper_value(table: str, column: str, model: str) -> float | None:
    """The paper's printed number for `model` (matched ignoring case and punctuation) in `column`."""
    ref = paper_table(table) or {"rows": [], "keys": []}
    for row in ref["rows"]:
        if _norm(row.get("model")) == _norm(model) and isinstance(row.get(column), (int, float)):
            return float(row[column])
    return None


def _slug(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9.-]+", "-", p) for p in parts)


def _figure():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt, *plt.subplots(figsize=(6.4, 3.6))


def _finish(plt, fig, ax, path: Path, dates: list[datetime.datetime]) -> None:
    import matplotlib.dates as mdates
    if dates and max(dates) - min(dates) < datetime.timedelta(hours=1):
        # One date (a single run): a day either side, not the years matplotlib would pick.
        ax.set_xlim(min(dates) - datetime.timedelta(days=1), max(dates) + datetime.timedelta(days=1))
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def headline_plots(runs: list[Entry], folder: Path) -> list[tuple[str, str, Path]]:
    """Per (model, task): the headline metric in the paper's unit over runs, one line per configuration,
    each point labelled with its commit, and the paper's number as a dashed line."""
    series: dict[tuple[str, str], list[Entry]] = {}
    for run in runs:
        for task in run.data["results"]:
            series.setdefault((run.data.get("model", "?"), task), []).append(run)
    out = []
    for (model, task), entries in sorted(series.items()):
        head = entries[-1].data.get("headline", {}).get(task, {})
        metric, scale = head.get("metric"), head.get("scale", 1.0)
        if not metric:
            continue
        plt, fig, ax = _figure()
        for chash in dict.fromkeys(e.data.get("config_hash") for e in entries):
            points = [(e, e.data["results"][task].get(metric)) for e in entries if e.data.get("config_hash") == chash]
            points = [(e, v * scale) for e, v in points if compare.finite(v)]
            if not points:
                continue
            weights = " (random weights)" if any("random weights" in w for w in points[-1][0].data.get("warnings", [])) else ""
            ax.plot([e.created for e, _ in points], [v for _, v in points], marker="o", label=f"{model} {chash}{weights}")
            for e, v in points:
                ax.annotate(e.commit, (e.created, v), textcoords="offset points", xytext=(3, 4), fontsize=6)
        reference = paper_value(head.get("table", ""), head.get("column", ""), model)
        if reference is not None:
            ax.axhline(reference, linestyle="--", color="gray", label=f"paper: {reference:g}")
        ax.set_title(f"{model} / {task}: {head.get('column') or metric}", fontsize=9)
        ax.set_ylabel(f"{metric}" + (f" x {scale:g}" if scale != 1 else ""), fontsize=8)
        path = folder / f"headline_{_slug(model, task)}.png"
        _finish(plt, fig, ax, path, [e.created for e in entries])
        out.append((model, task, path))
    return out


def _speed_values(report: Entry) -> dict[tuple, dict[str, float]]:
    """{(model, mode, kind, length): {metric column: value}} of a report's finished points."""
    out = {}
    for p in report.data["points"]:
        if p.get("status") != "ok":
            continue
        values = {column: p[key] * factor for column, key, factor, _, _ in compare.SPEED_METRICS
                  if compare.finite(p.get(key))}
        out[(p["model"], p["mode"], p["kind"], p.get("length"))] = values
    return out


def speed_trend_plots(speeds: list[Entry], folder: Path) -> list[Path]:
    """Decode latency, peak memory and images/s of each model and mode over the speed reports, at the
    longest context every report measured for it."""
    values = [(s, _speed_values(s)) for s in speeds]
    out = []
    for column, title in (("decode_ms_per_token", "decode latency (ms/token)"),
                          ("peak_memory_gib", "peak memory, torch allocator (GiB)"),
                          ("images_per_s", "image generation (images/s)")):
        series: dict[tuple, dict[Any, list]] = {}
        for report, points in values:
            for (model, mode, kind, length), v in points.items():
                if column in v:
                    series.setdefault((model, mode, kind), {}).setdefault(length, []).append((report.created, v[column]))
        if not series:
            continue
        plt, fig, ax = _figure()
        for (model, mode, kind), by_length in sorted(series.items()):
            longest = max(by_length, key=lambda n: (len(by_length[n]), n or 0))
            points = sorted(by_length[longest])
            where = f" @ {longest} tokens" if kind == "context" else ""
            ax.plot([d for d, _ in points], [v for _, v in points], marker="o", label=f"{model} ({mode}){where}")
        ax.set_title(f"{title} over speed reports", fontsize=9)
        ax.set_ylabel(title, fontsize=8)
        if column != "images_per_s":
            ax.set_yscale("log")
        path = folder / f"speed_trend_{column}.png"
        _finish(plt, fig, ax, path, [s.created for s in speeds])
        out.append(path)
    return out


def _table(frame: pd.DataFrame, css: str = "") -> str:
    return frame.to_html(index=False, escape=True, na_rep="-", border=0, classes=css or None)


def _img(path: Path, root: Path, alt: str) -> str:
    return f'<img src="{html.escape(path.relative_to(root).as_posix())}" alt="{html.escape(alt)}">'


def runs_frame(runs: list[Entry]) -> pd.DataFrame:
    rows = []
    for run in reversed(runs):
        for task, metrics in run.data["results"].items():
            head = run.data.get("headline", {}).get(task, {})
            value = metrics.get(head.get("metric"))
            counts = (run.data.get("n_samples") or {}).get(task, {})
            rows.append({"date (UTC)": f"{run.created:%Y-%m-%d %H:%M}", "commit": run.commit,
                         "model": run.data.get("model"), "config": run.data.get("config_hash"), "task": task,
                         "headline": head.get("metric"),
                         "value": f"{value * head.get('scale', 1.0):.4g}" if compare.finite(value) else str(value),
                         "samples": counts.get("total"), "failed": counts.get("failed"),
                         "warnings": "; ".join(run.data.get("warnings", []))})
    return pd.DataFrame(rows)


def render(runs: list[Entry], speeds: list[Entry], out: Path, title: str) -> Path:
    """Write `out/index.html` and its plots; returns the page's path."""
    folder = out / PLOTS
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # plots of a previous build that this one may not redraw
        old.unlink()
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p class=meta>Built {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC from "
             f"{len(runs)} run(s) and {len(speeds)} speed report(s).</p>"]
    if runs:
        parts.append("<h2>Headline metrics over runs</h2><p>Each point is one run (date, commit); the dashed line "
                     "is the paper's number for that model, where the paper has one.</p><div class=grid>")
        parts += [_img(p, out, f"{model} {task} headline over runs") for model, task, p in headline_plots(runs, folder)]
        parts.append("</div><h2>Latest run against the paper's tables</h2>")
        latest: dict[tuple, Entry] = {}
        for run in runs:
            latest[(run.data.get("model"), run.data.get("config_hash"))] = run
        for (model, chash), run in latest.items():
            for table, measured in measured_rows(run.data).items():
                label = f"{model} {chash} (omnibench, {run.label})"
                frame, source = paper_layout_frame(table, measured, label)
                frame = frame.replace(to_replace=r"^\*\*(.*)\*\*$", value=r"\1", regex=True)
                parts += [f"<h3>{html.escape(table)}: {html.escape(label)}</h3>", _table(frame, "paper"),
                          f"<p class=meta>{html.escape(source)} Last row: measured.</p>"]
            if run.data.get("warnings"):
                parts.append("<ul class=warn>" + "".join(f"<li>{html.escape(w)}</li>" for w in run.data["warnings"]) + "</ul>")
        parts += ["<h2>Runs</h2>", _table(runs_frame(runs))]
    if speeds:
        parts.append("<h2>Speed and memory over time</h2><div class=grid>")
        parts += [_img(p, out, p.stem.replace("_", " ")) for p in speed_trend_plots(speeds, folder)]
        last = speeds[-1]
        points = last.data["points"]
        parts += ["</div>", f"<h2>Latest speed report ({html.escape(last.label)})</h2>",
                  f"<p class=meta>{html.escape(str(last.path))}</p><div class=grid>"]
        parts += [_img(p, out, p.stem.replace("_", " ")) for p in speed_report.plot(points, folder)]
        parts.append("</div>")
        ratios = pd.DataFrame(speed_report.ratio_rows(points, "best", "as_published"))
        if len(ratios):
            fig = paper_table("fig1_speed") or {}
            parts += ["<h3>Against the paper's Fig. 1 claims (OmniMamba best vs baselines as published)</h3>",
                      _table(ratios), f"<p class=meta>Paper: {html.escape(str(fig.get('source')))}, GPU: "
                      f"{html.escape(str(fig.get('gpu')))}.</p>"]
        images = speed_report.image_table(points)
        if len(images):
            parts += ["<h3>Image generation against the paper's Table 3</h3>", _table(images)]
    style = ("body{font-family:sans-serif;margin:1.5em;max-width:1400px;color:#222}"
             "table{border-collapse:collapse;font-size:12px;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
             "table.paper tr:last-child{font-weight:bold;background:#eef6ff}"
             ".grid{display:flex;flex-wrap:wrap;gap:8px}.grid img{width:480px;border:1px solid #ddd}"
             ".meta{color:#666;font-size:12px}.warn{color:#a40}")
    page = (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    index = out / "index.html"
    atomic_write_text(index, page)
    return index


def run(args: argparse.Namespace) -> int:
    runs, speeds = collect(args.runs)
    index = render(runs, speeds, Path(args.out), args.title)
    print(f"dashboard: {index} ({len(runs)} runs, {len(speeds)} speed reports)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnibench.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders, results.json or speed.json files, or folders holding them")
    parser.add_argument("--out", default="site", help="folder for index.html and its plots (default: site)")
    parser.add_argument("--title", default="omnibench dashboard")
    add_verbosity_flag(parser)
    args = parser.parse_args(argv)
    return cli_main(lambda: run(args), args.verbosity)


if __name__ == "__main__":
    sys.exit(main())
