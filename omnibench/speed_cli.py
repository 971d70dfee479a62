"""`run_speed.py`: flags over the speed sweep (omnibench.speed) and its reports."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from omnibench.config import check_at_least, check_device, check_writable_dir, parse_kv, scoped_args
from omnibench.errors import add_verbosity_flag, cli_main
from omnibench.manifest import build_manifest
from omnibench.protocol import ModelAdapter, OmnibenchError, SpeedProtocol
from omnibench.registry import get_model_class
from omnibench.speed import DEFAULT_LENGTHS, EVAL_WORKLOADS, SWEEP_MODES, SweepConfig, as_dict, run_sweep
from omnibench.speed_report import code_check, record_run, write_reports

log = logging.getLogger("omnibench")


def paper_models() -> list[str]:
    """The registered models of the paper's Fig. 1 (reports/paper/fig1_speed.json `models`)."""
    from omnibench.report import paper_table
    models = (paper_table("fig1_speed") or {}).get("models", {})
    return list(dict.fromkeys(models.values()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_speed.py", description=__doc__)
    p.add_argument("--models", default=",".join(paper_models()), help="comma list (default: the models of the "
                   "paper's Fig. 1, from reports/paper/fig1_speed.json)")
    p.add_argument("--modes", default="best", help="comma list of best, as_published (SDPA without cuDNN, as "
                   "upstream's torch), as_published+cudnn (the same with this torch's default SDPA backends)")
    p.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)), help="context lengths in tokens")
    p.add_argument("--max-len", type=int, default=None, help="drop lengths above this")
    p.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--preset", default="full", help="full (random weights, full size), tiny, or a checkpoint: "
                   "pretrained=<path> is taken from --model_args")
    p.add_argument("--model_args", default="", help="k=v,... for every model or <model>.k=v for one "
                   "(e.g. omnimamba.cfg_scale=3)")
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--warmup-steps", type=int, default=4, help="untimed decode steps before the timed ones")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--point-timeout", type=float, default=300.0, help="seconds per point before it is recorded as timeout")
    p.add_argument("--full-budget", type=float, default=60.0,
                   help="measure the whole forced generation when its estimate is under this many seconds (0: never)")
    p.add_argument("--image-batch", type=int, default=16)
    p.add_argument("--eval-workloads", default=",".join(EVAL_WORKLOADS),
                   help="benchmarks whose request shape is timed for the evaluation-throughput table, in best "
                        "mode ('none' for none)")
    p.add_argument("--eval-samples", type=int, default=256, help="requests per evaluation-throughput workload")
    p.add_argument("--eval-batch", type=int, default=16, help="batch size of the evaluation-throughput workloads")
    p.add_argument("--prep-workers", type=int, default=None, help="processes preparing the evaluation batches' "
                   "images and prompts, as run_eval.py's --prep_workers (default: up to 8 on a GPU, 0 on CPU)")
    p.add_argument("--fid-features", type=int, default=0, help="time Inception feature extraction over this many "
                   "random 256 px PNGs for the FID-30K wall-clock estimate (0: not measured); without the weights "
                   "file, a stand-in from bench/inception_stand_in.py via $OMNIBENCH_INCEPTION times the same")
    p.add_argument("--fid-workers", type=int, default=8, help="DataLoader workers of the Inception-rate point")
    p.add_argument("--output-dir", default="results/speed",
                   help="the point store and reports (the committed reports/speed only when named here)")
    p.add_argument("--report-only", action="store_true", help="render reports from the finished points; measure nothing")
    p.add_argument("--gpu", default=None, help="with --report-only: whose points to report (e.g. 'NVIDIA H100 80GB HBM3')")
    add_verbosity_flag(p)
    return p


def parse_lengths(text: str, max_len: int | None) -> list[int]:
    """'1024,2048' -> [1024, 2048], without those above `max_len` (only `max_len` if none is left)."""
    parts = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in parts if not x.isdigit()]
    if bad:
        raise OmnibenchError(f"--lengths {text!r}: '{bad[0]}' is not a whole number of tokens "
                             "(give a comma list such as 1024,2048)")
    if not parts:
        raise OmnibenchError(f"--lengths {text!r} names no length (give a comma list such as 1024,2048)")
    lengths = sorted({int(x) for x in parts})
    if lengths[0] < 2:
        raise OmnibenchError(f"--lengths {text!r}: {lengths[0]} is too short (each length must be at least 2 tokens)")
    if max_len is not None:
        check_at_least("--max-len", max_len, 2)
        lengths = [n for n in lengths if n <= max_len] or [max_len]
    return lengths


def to_config(args: argparse.Namespace) -> SweepConfig:
    """The sweep the flags ask for; every bad value is a one-line error here, before anything is built or written."""
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise OmnibenchError("--models is empty: give a comma list of models (e.g. omnimamba,showo,janusflow)")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes:
        raise OmnibenchError(f"--modes is empty: give a comma list of {', '.join(SWEEP_MODES)}")
    bad = [m for m in modes if m not in SWEEP_MODES]
    if bad:
        raise OmnibenchError(f"unknown mode '{bad[0]}' (known: {', '.join(SWEEP_MODES)})")
    workloads = [] if args.eval_workloads.strip() == "none" else \
        [w.strip() for w in args.eval_workloads.split(",") if w.strip()]
    from omnibench.protocol import Task
    from omnibench.registry import get_task_class
    for w in workloads:  # unknown names fail here with the known ones
        if get_task_class(w).throughput_requests.__func__ is Task.throughput_requests.__func__:
            raise OmnibenchError(f"--eval-workloads: task '{w}' declares no throughput workload (known: "
                                 f"{', '.join(EVAL_WORKLOADS)}, or 'none')")
    for flag, value, minimum in (("--decode-steps", args.decode_steps, 1), ("--warmup-steps", args.warmup_steps, 0),
                                 ("--repeats", args.repeats, 1), ("--image-batch", args.image_batch, 1),
                                 ("--full-budget", args.full_budget, 0), ("--eval-samples", args.eval_samples, 1),
                                 ("--eval-batch", args.eval_batch, 1),
                                 ("--prep-workers", 0 if args.prep_workers is None else args.prep_workers, 0),
                                 ("--fid-features", args.fid_features, 0), ("--fid-workers", args.fid_workers, 0)):
        check_at_least(flag, value, minimum)
    check_at_least("--point-timeout", args.point_timeout, 0, exclusive=True)
    if args.gpu is not None and not args.report_only:
        raise OmnibenchError("--gpu selects whose finished points to report: use it with --report-only "
                             "(a measuring run records this machine's GPU)")
    # --report-only measures nothing: --device then only selects points, which may come from another machine.
    device = check_device(args.device, present=not args.report_only)
    return SweepConfig(models=models, modes=modes, lengths=parse_lengths(args.lengths, args.max_len), device=device,
                       dtype=args.dtype, preset=args.preset, decode_steps=args.decode_steps,
                       warmup_steps=args.warmup_steps, repeats=args.repeats, point_timeout_s=args.point_timeout,
                       full_generation_budget_s=args.full_budget, image_batch=args.image_batch,
                       eval_workloads=workloads, eval_samples=args.eval_samples, eval_batch=args.eval_batch,
                       prep_workers=args.prep_workers,
                       fid_features=args.fid_features, fid_workers=args.fid_workers,
                       output_dir=str(check_writable_dir(args.output_dir, "--output-dir")),
                       model_args=parse_kv(args.model_args, "--model_args"), report_only=args.report_only, gpu=args.gpu)


def speed_model_class(model: str) -> type[ModelAdapter]:
    """The adapter class of a model the sweep can time; unknown names fail with the list of known ones."""
    cls = get_model_class(model, speed_references=True)
    if not issubclass(cls, SpeedProtocol):
        raise OmnibenchError(f"model '{model}' has no prefill/decode_step for the speed sweep")
    return cls


def registry_factory(cfg: SweepConfig):
    def build(model: str, mode: str) -> ModelAdapter:
        return speed_model_class(model)(device=cfg.device, dtype=cfg.dtype,
                                        **{"preset": cfg.preset, "mode": mode, **scoped_args(model, cfg.model_args)})
    return build


def sweep(args: argparse.Namespace, command: list[str]) -> int:
    cfg = to_config(args)
    for model in cfg.models:
        speed_model_class(model)  # unknown names fail before anything runs
    manifest = build_manifest(as_dict(cfg), argv=command)
    factory, recorded, unbuilt = registry_factory(cfg), [], []

    def build(model: str, mode: str) -> ModelAdapter:
        try:
            adapter = factory(model, mode)
        except OmnibenchError as exc:
            unbuilt.append(f"{model}/{mode} cannot be built: {exc}")
            raise
        if not recorded:  # recorded once a model is built, so a bad --preset or --model_args writes nothing
            record_run(Path(cfg.output_dir), manifest)
            recorded.append(True)
        return adapter

    points = run_sweep(cfg, build)
    if not points:
        if unbuilt:
            raise OmnibenchError(f"no finished points: {unbuilt[0]}")
        raise OmnibenchError(f"no finished points for this selection in {cfg.output_dir} (--report-only measures "
                             "nothing: check --output-dir, --models, --modes, --device, --dtype, --preset, --gpu, "
                             "or measure first)" if cfg.report_only else
                             f"no finished points for this sweep in {cfg.output_dir}")
    rendered = build_manifest(as_dict(cfg), argv=command)
    rendered["code_check"] = code_check(points)
    for label, entry in rendered["code_check"].items():
        other = {v: n for v, n in entry["measured"].items() if v != entry["now"]}
        if other:  # only a report from stored points can get here: a sweep measures such points again
            log.warning(f"{label}: {sum(other.values())} point(s) in this report were measured with other code "
                        f"(code_version {', '.join(sorted(other))}; this checkout: {entry['now']}): the report "
                        f"says so; run without --report-only to measure them with this code")
    paths = write_reports(points, rendered, Path(cfg.output_dir))
    print(f"report: {paths['md']}\njson:   {paths['json']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)  # argparse's own errors: usage, then "run_speed.py: error: ...", exit 2
    return cli_main(lambda: sweep(args, ["run_speed.py", *argv]), args.verbosity)
