"""report.md: the measured row beside the paper's published rows, in the paper's table layout, then
every metric, sample counts and how the run was made."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

# Installed: package data beside this module; in a checkout: the repository's reports/paper.
_HERE = Path(__file__).resolve().parent
PAPER_DIR = _HERE / "paper" if (_HERE / "paper").is_dir() else _HERE.parent / "reports" / "paper"


def paper_table(name: str) -> dict[str, Any] | None:
    path = PAPER_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


def _decimals(values: list[Any]) -> int:
    """As many decimals as the paper prints in that column (at least one)."""
    printed = [len(repr(v).split(".")[1]) for v in values if isinstance(v, float) and "." in repr(v)]
    return max([1, *printed])


def measured_rows(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{paper table: {column: value in the paper's unit}} from a results.json object."""
    out: dict[str, dict[str, float]] = {}
    for task, head in results["headline"].items():
        value = results["results"].get(task, {}).get(head["metric"])
        if head["column"] and value is not None:
            out.setdefault(head["table"], {})[head["column"]] = value * head["scale"]
    return out


def paper_layout_table(table: str, measured: dict[str, float], label: str, checkpoint: str = "") -> str:
    """The paper's rows and columns (header `columns[i]` shows row field `keys[i]`) with our measured row
    appended, as Markdown; a measured column the paper lacks (e.g. a val split) is added at the end.
    `checkpoint` fills our row's checkpoint column, so it can be read against the row naming the same one."""
    frame, source = paper_layout_frame(table, measured, label, checkpoint)
    # Cells are already formatted as the paper prints them: keep tabulate from re-parsing them.
    return frame.to_markdown(index=False, disable_numparse=True) + f"\n\n{source}\n"


def paper_layout_frame(table: str, measured: dict[str, float], label: str,
                       checkpoint: str = "") -> tuple[pd.DataFrame, str]:
    """`paper_layout_table`'s cells (formatted as the paper prints them) and its source line."""
    ref = paper_table(table) or {"columns": ["Model"], "keys": ["model"], "rows": []}
    pairs = list(zip(ref["columns"], ref["keys"]))
    pairs += [(c, c) for c in measured if c not in ref["keys"]]
    metric_keys = set(measured) | set(ref.get("higher_is_better", {}))
    digits = {k: _decimals([r.get(k) for r in ref["rows"]]) for k in metric_keys}
    rows = [{h: (_fmt(r.get(k), digits[k]) if k in metric_keys else ("" if r.get(k) is None else str(r.get(k))))
             for h, k in pairs} for r in ref["rows"]]
    rows.append({h: (_fmt(measured.get(k), digits[k]) if k in metric_keys else "") for h, k in pairs}
                | {h: f"**{label}**" for h, k in pairs if k == "model"}
                | {h: checkpoint for h, k in pairs if k == "checkpoint"})
    frame = pd.DataFrame(rows, columns=[h for h, _ in pairs])
    source = f"Published rows: {ref['source']} ({ref.get('url', '')})." if "source" in ref else \
        "No published table found in reports/paper/."
    return frame, source


def render_report(results: dict[str, Any]) -> str:
    manifest = results["manifest"]
    label = f"{results['model']} (omnibench, measured{', see warnings' if results.get('warnings') else ''})"
    parts = [f"# omnibench report: {results['model']}\n",
             f"Command: `{manifest['command']}`  \nConfig hash: `{results['config_hash']}`  \n"
             f"Git: `{manifest['git'].get('commit')}`{' (dirty)' if manifest['git'].get('dirty') else ''}  \n"
             f"Created: {manifest['created_utc']}\n"]
    if results.get("warnings"):
        parts.append("**Read before comparing:**\n\n" + "".join(f"- **{w}**\n" for w in results["warnings"]))
    model_config = manifest.get("identity", {}).get("model_config", {})
    checkpoint = (f"preset={model_config['preset']} (random weights)" if model_config.get("preset")
                  else str(model_config.get("pretrained") or ""))
    for table, measured in measured_rows(results).items():
        parts.append(f"## {table}\n\n{paper_layout_table(table, measured, label, checkpoint)}")
    parts.append("## All metrics\n")
    for task, metrics in results["results"].items():
        n = results["n_samples"][task]
        rate = results["timing"][task].get("samples_per_second")
        parts.append(f"### {task} ({n['total']} samples, {n['failed']} failed"
                     f"{f', {rate} samples/s' if rate else ''})\n")
        frame = pd.DataFrame([{"metric": k, "value": _fmt(v, 4)} for k, v in sorted(metrics.items())])
        parts.append((frame.to_markdown(index=False) if len(frame) else "(no metrics)") + "\n")
    parts.append("## Reproduce\n\n```\n" + json.dumps({k: manifest[k] for k in
                 ("command", "config", "packages", "git", "datasets", "hardware")}, indent=2, default=str) + "\n```\n")
    return "\n".join(parts)
