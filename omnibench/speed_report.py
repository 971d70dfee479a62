"""speed.json, speed.md and plots from the sweep's points, with the paper's Fig. 1 and Table 3 beside them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from omnibench.cache import atomic_write_text
from omnibench.report import paper_table
from omnibench.speed import STAND_IN_WEIGHTS, with_totals

GIB = 1024 ** 3
# The paper's ratio claims (Fig. 1(c)(d)): baseline, metric, context length in tokens.


def _gib(value: Any) -> float | None:
    return value / GIB if isinstance(value, (int, float)) else None


def _peak(p: dict[str, Any]) -> float | None:
    """Peak memory of a point for the ratios: torch's allocator peak, a true peak on every backend.
    (NVML's process total is shown beside it; it is read between timed regions, not polled.)"""
    return p.get("peak_memory_bytes_torch")


def code_label(point: dict[str, Any]) -> str:
    """The point's `code_version` (omnibench.speed.point_code_version), shortened; points from before it
    was recorded show "-"."""
    return point["code_version"][:8] if point.get("code_version") else "-"


def code_check(points: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model (and evaluation workload) of `points`: this checkout's `point_code_version` ("now") and how
    many of the points each recorded code version measured ("measured"), for a report rendered from stored
    points (`--report-only`) to say whether this code measured them."""
    from omnibench.speed import point_code_version  # (here, not in omnibench.speed: that module's source is
    # part of every point's code version)

    out: dict[str, dict[str, Any]] = {}
    for p in points:
        label = p["model"] + (f"/{p['workload']}" if p.get("workload") else "")
        entry = out.setdefault(label, {"now": point_code_version(p["model"], p.get("workload")), "measured": {}})
        measured = str(p.get("code_version") or "-")
        entry["measured"][measured] = entry["measured"].get(measured, 0) + 1
    return out


PROFILED_EARLIER = "may follow a profiled call"


def note(point: dict[str, Any]) -> str:
    """Why a point failed, and PROFILED_EARLIER for a GPU point that a sweep from before the attention probe
    moved after the timed points (omnibench.speed.ATTENTION_PENDING) may have timed with CUPTI attached."""
    flags = [point.get("reason", "")]
    if (str(point.get("device", "")).startswith("cuda") and point.get("status") == "ok"
            and "profiled_before_timing" not in point):
        flags.append(PROFILED_EARLIER)
    return "; ".join(f for f in flags if f)


def context_table(points: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for p in sorted((p for p in points if p["kind"] == "context"), key=lambda p: (p["model"], p["mode"], p["length"])):
        ok = p.get("status") == "ok"
        rows.append({
            "model": p["model"], "mode": p["mode"], "length": p["length"], "status": p["status"],
            "prefill_s": p.get("prefill_seconds") if ok else None,
            "decode_ms_per_token": p["decode_seconds_per_token"] * 1e3 if ok else None,
            "tokens_per_s": p.get("decode_tokens_per_second") if ok else None,
            "total_s": p.get("total_seconds"), "total_source": p.get("total_source", ""),
            "peak_torch_gib": _gib(p.get("peak_memory_bytes_torch")),
            "nvml_process_gib": _gib(p.get("peak_memory_bytes_nvml")),
            "attention": p.get("attention_backend", "not recorded"),
            "code": code_label(p), "note": note(p),
        })
    return pd.DataFrame(rows)


def eval_table(points: list[dict[str, Any]]) -> pd.DataFrame:
    """Samples per second of each benchmark's request shape, per model (best mode)."""
    rows = [{"model": p["model"], "mode": p["mode"], "workload": p["workload"], "status": p["status"],
             "batch": p.get("batch"), "samples": p.get("samples"), "image": "x".join(map(str, p.get("image_size") or [])),
             "output_tokens": p.get("max_new_tokens"), "timed_passes": p.get("repeats"),
             "samples_per_s": p.get("samples_per_second"),
             "code": code_label(p), "note": note(p)}
            for p in sorted((p for p in points if p["kind"] == "eval_throughput"),
                            key=lambda p: (p["workload"], p["model"], p["mode"]))]
    return pd.DataFrame(rows)


FID_IMAGES = 30000


def fid_estimate_rows(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FID-30K wall-clock on one GPU, estimated from measured rates: 30,000 images at the image-generation
    point's rate plus 30,000 Inception feature extractions at the `fid_features` point's rate (reference
    statistics are cached, so a repeated run extracts only the generated images' features)."""
    feats = next((p for p in points if p["kind"] == "fid_features" and p.get("status") == "ok"), None)
    rows = []
    for p in sorted((p for p in points if p["kind"] == "image_gen" and p.get("status") == "ok"),
                    key=lambda p: (p["model"], p["mode"])):
        gen = FID_IMAGES / p["images_per_second"]
        inc = FID_IMAGES / feats["images_per_second"] if feats else None
        rows.append({"model": p["model"], "mode": p["mode"], "generation_min": gen / 60,
                     "inception_min": None if inc is None else inc / 60,
                     "total_min (estimated)": None if inc is None else (gen + inc) / 60})
    return rows


def inception_rate_line(feats: dict[str, Any]) -> str:
    """The Inception rate behind the estimate, and what network and weights it was timed with."""
    steady = feats.get("steady_images_per_second")
    line = (f"Inception features: {feats['images_per_second']:.0f} images/s over the whole call"
            + (f" ({steady:.0f} images/s after the first batch, {feats['startup_seconds']:.1f} s to it)"
               if steady else "")
            + f" ({feats.get('note', '')}). ")
    weights = feats.get("inception_weights")
    if weights == STAND_IN_WEIGHTS:
        line += ("Timed with a stand-in Inception: NVIDIA's graph with random weights (the FID weights file was not "
                 "on the GPU machine); same shapes, so the same speed, and refused for any FID. ")
    elif weights and weights != "real":
        line += f"Timed with {weights}. "
    return line


def _point(points: list[dict[str, Any]], model: str, mode: str, length: int) -> dict[str, Any] | None:
    for p in points:
        if p["kind"] == "context" and p["model"] == model and p["mode"] == mode and p["length"] == length \
                and p.get("status") == "ok":
            return p
    return None


def ratio_rows(points: list[dict[str, Any]], ours_mode: str, baseline_mode: str) -> list[dict[str, Any]]:
    """The paper's model's speedup (total time ratio) and memory saving (in `ours_mode`) against each
    baseline (in `baseline_mode`) at the paper's claim lengths, beside the paper's numbers. Which models
    and lengths those are is data (reports/paper/fig1_speed.json: `models`, `seq_len_tokens`)."""
    fig = paper_table("fig1_speed") or {"claims": [], "models": {}, "seq_len_tokens": {}}
    name = fig["models"].get("ours")
    rows = []
    for claim in fig["claims"]:
        baseline = fig["models"].get(claim["vs"])
        length = fig["seq_len_tokens"].get(claim["seq_len"])
        ours, theirs = _point(points, name, ours_mode, length), _point(points, baseline, baseline_mode, length)
        value = None
        if ours and theirs:
            if claim["metric"] == "inference_time_speedup" and ours.get("total_seconds") and theirs.get("total_seconds"):
                value = theirs["total_seconds"] / ours["total_seconds"]
            elif claim["metric"] == "gpu_memory_reduction" and _peak(ours) and _peak(theirs):
                value = 100 * (1 - _peak(ours) / _peak(theirs))
        what = ("forced generation from a 640-token prompt to the length, prefill included" if claim["metric"] ==
                "inference_time_speedup" else "torch allocator peak over the point")
        rows.append({name: ours_mode, "vs": f"{baseline} ({baseline_mode})", "metric": claim["metric"],
                     "length": length, "gpu": (ours or theirs or {}).get("gpu"), "includes": what,
                     "attention (baseline)": (theirs or {}).get("attention_backend", "-"),
                     "paper": f"{claim['value']}{claim['unit']} ({fig.get('gpu', '').split(' (')[0]})",
                     "measured": "-" if value is None else f"{value:.1f}{claim['unit']}",
                     "why missing": "" if value is not None else
                     ("baseline point not ok (oom/timeout/not run)" if ours else f"{name} point not ok / not run")})
    return rows


# Which modes are set against each other: the paper's own setting (OmniMamba on its fast decode path,
# the baselines as their code ships), then like against like.
RATIO_SETTINGS = (("best", "as_published", "paper's setting: OmniMamba's fast path vs the baselines as published "
                                           "(SDPA without cuDNN, as upstream's torch 2.0-2.2)"),
                  ("best", "as_published+cudnn", "the cuDNN effect: the same, with this torch's default SDPA "
                                                 "(cuDNN first on Hopper: a new plan per decode length)"),
                  ("best", "best", "every model with its best kernels"),
                  ("as_published", "as_published", "every model as published"))


def image_table(points: list[dict[str, Any]]) -> pd.DataFrame:
    table = paper_table("table3_gen_speed") or {"rows": [], "models": {}}
    paper = {table["models"].get(r["model"]): r for r in table["rows"]}
    rows = []
    for p in sorted((p for p in points if p["kind"] == "image_gen"), key=lambda p: (p["model"], p["mode"])):
        ref = paper.get(p["model"])
        rows.append({"model": p["model"], "mode": p["mode"], "status": p["status"], "batch": p.get("batch"),
                     "images_per_s": p.get("images_per_second"), "total_s": p.get("total_seconds"),
                     "attention": p.get("attention_backend", "not recorded"),
                     "paper_images_per_s": ref and ref.get("gen_avg_images_per_s"),
                     "paper_total_s": ref and ref.get("total_s"), "code": code_label(p),
                     "note": note(p)})
    return pd.DataFrame(rows)


def plot(points: list[dict[str, Any]], folder: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    ctx = [p for p in points if p["kind"] == "context" and p.get("status") == "ok"]
    for name, key, ylabel, scale, logy in (
            ("speed_time.png", "total_seconds", "total generation time (s)", 1.0, True),
            ("speed_decode.png", "decode_seconds_per_token", "decode latency (ms/token)", 1e3, True),
            ("speed_memory.png", None, "peak GPU memory (GiB)", 1.0 / GIB, False)):
        fig, ax = plt.subplots(figsize=(6, 4))
        for (model, mode) in sorted({(p["model"], p["mode"]) for p in ctx}):
            series = sorted((p["length"], (p.get(key) if key else _peak(p))) for p in ctx
                            if p["model"] == model and p["mode"] == mode)
            series = [(x, y * scale) for x, y in series if y is not None]
            if series:
                ax.plot(*zip(*series), marker="o", label=f"{model} ({mode})")
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        out.append(path)
    return out


RUNS_FILE = "speed_runs.jsonl"


def record_run(folder: Path, manifest: dict[str, Any]) -> None:
    """Append the manifest of a measuring run (command, GPU, driver, versions) to the store's folder:
    a report rendered elsewhere later still says where its points were measured."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / RUNS_FILE, "a") as fh:
        fh.write(json.dumps(manifest, sort_keys=True, default=str) + "\n")


def measuring_runs(folder: Path) -> list[dict[str, Any]]:
    path = folder / RUNS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def write_reports(points: list[dict[str, Any]], manifest: dict[str, Any], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    points = with_totals(points)
    runs = measuring_runs(folder)
    atomic_write_text(folder / "speed.json", json.dumps({"schema_version": 1, "manifest": manifest, "runs": runs,
                                                         "points": points}, indent=2, sort_keys=True) + "\n")
    modes = sorted({p["mode"] for p in points})
    ctx = context_table(points)
    pivots = []
    if len(ctx):
        for column, title in (("decode_ms_per_token", "Decode latency (ms/token)"),
                              ("total_s", "Total time of a forced generation to the length (s)"),
                              ("peak_torch_gib", "Peak memory, torch allocator (GiB)")):
            # A point that did not finish shows why (oom, timeout, skipped) instead of a number.
            cells = [f"{v:.3g}" if st == "ok" and v == v and v is not None else st
                     for v, st in zip(ctx[column], ctx["status"])]
            table = ctx.assign(model_mode=ctx["model"] + " (" + ctx["mode"] + ")", cell=cells).pivot(
                index="model_mode", columns="length", values="cell").fillna("")
            if table.size:
                pivots += [f"### {title}\n", table.to_markdown(), ""]
    measured_by = [f"- `{r.get('command')}`: {r.get('hardware', {}).get('gpus')}, driver "
                   f"{r.get('hardware', {}).get('nvidia_driver')}, {r.get('packages')}" for r in runs]
    code_lines = []
    for label, entry in sorted(manifest.get("code_check", {}).items()):
        versions = ", ".join(f"{n} with {v[:8]}" for v, n in sorted(entry["measured"].items()))
        other = any(v != entry["now"] for v in entry["measured"])
        code_lines.append(f"- {label}: points measured {versions}; the checkout that rendered this report: "
                          f"{entry['now'][:8]}" + (" (**measured with other code**)" if other else " (the same)"))
    parts = ["# Speed and memory of long generation and image generation\n",
             f"Rendered by: `{manifest.get('command')}`  \nSelection rendered: {manifest.get('config')}\n",
             "Measured by (each run's command, GPU, driver and packages; `speed_runs.jsonl`):\n",
             "\n".join(measured_by) if measured_by else "- (no run manifest recorded)", "",
             *(["Code (each point's `code_version`: a digest of the project code its numbers depend on, the "
                "`code` column; a sweep measures again every selected point whose code changed, a report "
                "rendered from stored points does not):\n", "\n".join(code_lines), ""] if code_lines else []),
             "Weights: " + ("random (full-size architecture; speed and memory do not depend on weight values)"
                            if manifest.get("config", {}).get("preset") == "full" else "see config") + ".\n",
             "What is timed: at batch 1, prefill of a context of the given length (median of repeats), then "
             "decode steps appending one token each at that context (median latency after warm-up, CUDA events). "
             "`total_s` is the time of a generation forced (stop tokens ignored) up to the length: `measured` "
             "where it fit the budget, else `integrated` from the per-point decode latencies (linear between "
             "points) plus the prefill of the first point. Memory: torch `max_memory_allocated` over the point (the "
             "peak used in the ratios) and the process's NVML total read after the last prefill and at the end "
             "of the point (adds the CUDA context, allocator cache and graph pools; not polled during timing). "
             f"A note `{PROFILED_EARLIER}`: a GPU point from a sweep that named attention kernels with torch's "
             "profiler right after each point, so that later points of its process ran with CUPTI attached "
             "(pytorch/pytorch#144455), which slows launches: read it as possibly slow, the launch-bound ones "
             "(eager decode loops, evaluation batches) most.\n",
             "## Long generation\n", *pivots, "### Every point\n",
             ctx.to_markdown(index=False, floatfmt=".4g") if len(ctx) else "(no points)", ""]
    for ours_mode, baseline_mode, title in RATIO_SETTINGS:
        if ours_mode in modes and baseline_mode in modes:
            parts += [f"## Ratios against the paper's claims: {title}\n",
                      pd.DataFrame(ratio_rows(points, ours_mode, baseline_mode)).to_markdown(index=False), ""]
    fig = paper_table("fig1_speed")
    if fig:
        parts.append(f"Paper: {fig['source']}, GPU: {fig.get('gpu')}.\n")
    img = image_table(points)
    setting = (paper_table("table3_gen_speed") or {}).get("protocol", {})
    parts += [f"## Image generation (Table 3 setting: batch {setting.get('batch')}, {setting.get('resolution')} px, "
              f"prompt \"{setting.get('prompt')}\")\n",
              img.to_markdown(index=False, floatfmt=".4g") if len(img) else "(not run)", ""]
    ev = eval_table(points)
    if len(ev):
        parts += ["## Evaluation throughput (samples/s, best mode)\n",
                  "Each benchmark's request shape (the task's `throughput_requests`: its prompt, a typical image "
                  "size, the answer length forced as `max_new_tokens`), sorted by prompt length and sent in "
                  "batches through the adapter's `generate_text` (image preprocessing included), warmed by one "
                  "untimed pass over the same batches, then the median of `--repeats` timed passes "
                  "(`timed_passes`; empty: one timed pass, as points measured before that).\n",
                  ev.to_markdown(index=False, floatfmt=".4g"), ""]
    fid_rows = fid_estimate_rows(points)
    feats = next((p for p in points if p["kind"] == "fid_features" and p.get("status") == "ok"), None)
    if fid_rows:
        parts += ["## FID-30K wall-clock on one GPU (estimated from the measured rates)\n",
                  (inception_rate_line(feats) if feats else "Inception features: not measured in this selection. ")
                  + "Generation at the image-generation point's rate (its batch).\n",
                  pd.DataFrame(fid_rows).to_markdown(index=False, floatfmt=".3g"), ""]
    plots = plot(points, folder)
    parts.append("\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n")
    atomic_write_text(folder / "speed.md", "\n".join(parts))
    return {"json": folder / "speed.json", "md": folder / "speed.md", **{p.stem: p for p in plots}}
