"""The speed sweep's machinery on CPU: points, OOM and timeout handling, resume, totals, reports."""
import json
import os

import pytest
import torch
from PIL import Image

from omnibench.protocol import ModelAdapter, SpeedProtocol
from omnibench.speed import SweepConfig, integrated_total_seconds, point_settings, run_sweep, with_totals
from omnibench.speed_report import write_reports


class TinyRecurrent(ModelAdapter, SpeedProtocol):
    """A real (small) recurrent LM: prefill reads the context, decode_step advances a fixed-size state.
    Raises CUDA's OOM error at contexts of `oom_at` tokens or more."""

    name = "tiny_recurrent"

    def __init__(self, oom_at=None, sleep_per_step=0.0):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(1000, 16)
        self.cell = torch.nn.GRUCell(16, 16)
        self.head = torch.nn.Linear(16, 1000)
        self.oom_at = oom_at
        self.sleep = sleep_per_step

    @torch.inference_mode()
    def prefill(self, input_ids, max_new_tokens=0):
        if self.oom_at is not None and input_ids.shape[1] >= self.oom_at:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")
        h = torch.zeros(input_ids.shape[0], 16)
        for t in range(input_ids.shape[1]):
            h = self.cell(self.emb(input_ids[:, t]), h)
        return {"h": h}

    @torch.inference_mode()
    def decode_step(self, state, token):
        if self.sleep:
            import time
            time.sleep(self.sleep)
        state["h"] = self.cell(self.emb(token), state["h"])
        return self.head(state["h"])

    def generate_images(self, requests):
        return [Image.new("RGB", (8, 8), (r.seed % 255, 0, 0)) for r in requests]


def cfg_for(tmp_path, **kw):
    base = dict(models=["a", "b"], lengths=[8, 16, 32, 64], device="cpu", dtype="float32", preset="tiny",
                decode_steps=4, warmup_steps=1, repeats=1, full_generation_budget_s=0.0, image_batch=2,
                output_dir=str(tmp_path), eval_workloads=[])
    return SweepConfig(**{**base, **kw})


def test_oom_point_is_recorded_longer_ones_skipped_and_other_models_go_on(tmp_path):
    built = []

    def factory(model, mode):
        built.append(model)
        return TinyRecurrent(oom_at=32 if model == "a" else None)

    points = run_sweep(cfg_for(tmp_path), factory, log=lambda s: None)
    status = {(p["model"], p["length"]): p["status"] for p in points if p["kind"] == "context"}
    assert status == {("a", 8): "ok", ("a", 16): "ok", ("a", 32): "oom", ("a", 64): "skipped",
                      ("b", 8): "ok", ("b", 16): "ok", ("b", 32): "ok", ("b", 64): "ok"}
    oom = next(p for p in points if p["model"] == "a" and p["length"] == 32)
    assert "OutOfMemoryError" in oom["reason"]
    ok = next(p for p in points if p["model"] == "b" and p["length"] == 64)
    assert ok["decode_steps_timed"] == 4 and ok["decode_seconds_per_token"] > 0 and ok["prefill_seconds"] > 0
    images = [p for p in points if p["kind"] == "image_gen"]
    assert {p["model"] for p in images} == {"a", "b"} and all(p["batch"] == 2 for p in images)
    assert built == ["a", "b"]


def test_rerun_skips_finished_points_and_measures_only_new_ones(tmp_path):
    run_sweep(cfg_for(tmp_path, lengths=[8, 16]), lambda m, mode: TinyRecurrent(), log=lambda s: None)
    built = []

    def counting(model, mode):
        built.append(model)
        return TinyRecurrent()

    run_sweep(cfg_for(tmp_path, lengths=[8, 16]), counting, log=lambda s: None)
    assert built == []  # everything was on disk: no model is even built
    points = run_sweep(cfg_for(tmp_path, lengths=[8, 16, 24]), counting, log=lambda s: None)
    assert built == ["a", "b"]
    lines = (tmp_path / "speed_points.jsonl").read_text().splitlines()
    assert sum(json.loads(l)["length"] == 24 for l in lines) == 2
    assert len(lines) == 2 * 3 + 2  # three lengths per model + one image point per model
    assert len([p for p in points if p["kind"] == "context"]) == 6


def test_points_measured_with_other_code_are_measured_again_and_the_log_says_so(tmp_path, monkeypatch):
    from omnibench import speed
    run_sweep(cfg_for(tmp_path, lengths=[8, 16]), lambda m, mode: TinyRecurrent(), log=lambda s: None)
    lines = (tmp_path / "speed_points.jsonl").read_text().splitlines()
    assert {json.loads(l)["code_version"] for l in lines} == {speed.point_code_version("a")}
    real = speed.point_code_version
    monkeypatch.setattr(speed, "point_code_version", lambda m, w=None: "edited" if m == "a" else real(m, w))
    built, logs = [], []

    def counting(model, mode):
        built.append(model)
        return TinyRecurrent()

    points = run_sweep(cfg_for(tmp_path, lengths=[8, 16]), counting, log=logs.append)
    assert built == ["a"]  # b's code is unchanged: nothing of b is measured again
    assert any(l.startswith("a: 3 stored point(s) were measured with other code") and "now edited" in l for l in logs)
    assert {p["code_version"] for p in points if p["model"] == "a"} == {"edited"}
    # A point from before code versions were recorded counts as other code too.
    store = tmp_path / "speed_points.jsonl"
    rows = [json.loads(l) for l in store.read_text().splitlines()]
    store.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "code_version"}) + "\n" for r in rows))
    built.clear()
    run_sweep(cfg_for(tmp_path, lengths=[8, 16]), counting, log=lambda s: None)
    assert built == ["a", "b"]


def test_points_measured_with_other_sweep_flags_are_measured_again(tmp_path, monkeypatch):
    """A stored point is reused only for the flags it was measured with: another --image-batch re-measures
    the image points (not the context ones), another --decode-steps the context points."""
    def kinds(points):
        return sorted(p["kind"] for p in points)

    def lines():
        return [json.loads(l) for l in (tmp_path / "speed_points.jsonl").read_text().splitlines()]
    for name in [k for k in os.environ if k.startswith("OMNIBENCH_") and k != "OMNIBENCH_CACHE"]:
        monkeypatch.delenv(name)
    run_sweep(cfg_for(tmp_path, lengths=[8]), lambda m, mode: TinyRecurrent(), log=lambda s: None)
    first = lines()
    assert {p["sweep_settings"].get("image_batch") for p in first if p["kind"] == "image_gen"} == {2}
    logs = []
    points = run_sweep(cfg_for(tmp_path, lengths=[8], image_batch=3), lambda m, mode: TinyRecurrent(), log=logs.append)
    added = lines()[len(first):]
    assert kinds(added) == ["image_gen", "image_gen"]  # a and b; their context points stand
    assert {p["sweep_settings"]["image_batch"] for p in points if p["kind"] == "image_gen"} == {3}
    assert any("measured with other sweep flags" in l and "'image_batch': 2" in l for l in logs)
    before = len(lines())
    run_sweep(cfg_for(tmp_path, lengths=[8], image_batch=3, decode_steps=5), lambda m, mode: TinyRecurrent(),
              log=lambda s: None)
    assert kinds(lines()[before:]) == ["context", "context"]
    # The same flags again: nothing is measured.
    before = len(lines())
    run_sweep(cfg_for(tmp_path, lengths=[8], image_batch=3, decode_steps=5), lambda m, mode: TinyRecurrent(),
              log=lambda s: None)
    assert len(lines()) == before
    # A project switch in the environment (OMNIBENCH_PDL: how decode kernels launch) is a flag too.
    monkeypatch.setenv("OMNIBENCH_PDL", "1")
    run_sweep(cfg_for(tmp_path, lengths=[8], image_batch=3, decode_steps=5), lambda m, mode: TinyRecurrent(),
              log=lambda s: None)
    added = lines()[before:]
    assert kinds(added) == ["context", "context", "image_gen", "image_gen"]
    assert all(p["sweep_settings"]["env"] == {"OMNIBENCH_PDL": "1"} for p in added)
    # The Inception weights file is the FID point's switch alone: the model points stand (the FID run of a
    # sweep sets it), and the FID point records it.
    monkeypatch.setenv("OMNIBENCH_INCEPTION", str(tmp_path / "inception.pt"))
    before = len(lines())
    run_sweep(cfg_for(tmp_path, lengths=[8], image_batch=3, decode_steps=5), lambda m, mode: TinyRecurrent(),
              log=lambda s: None)
    assert len(lines()) == before
    assert point_settings("fid_features", cfg_for(tmp_path))["env"] == {
        "OMNIBENCH_INCEPTION": str(tmp_path / "inception.pt"), "OMNIBENCH_PDL": "1"}


def test_attention_kernels_are_named_only_after_every_timed_point(tmp_path, monkeypatch):
    """torch's profiler slows every later launch of the process (CUPTI stays attached), so no point may be
    timed after one: each context and image point is stored first as pending, then, once the run's last
    timed call is done, probed on a newly built model and stored again with its kernels."""
    from omnibench import speed
    events = []
    real_timer = speed.Timer.__call__

    def timer(self, fn):
        events.append("timed")
        return real_timer(self, fn)

    def profiled(fn, device):
        fn()
        events.append("profiled")
        return {"attention_backend": "flash", "attention_kernels": ["pytorch_flash_fwd"]}
    monkeypatch.setattr(speed.Timer, "__call__", timer)
    monkeypatch.setattr(speed, "attention_used", profiled)
    monkeypatch.setattr(speed, "profiles", lambda device: True)
    built, logs = [], []

    def factory(model, mode):
        built.append(model)
        return TinyRecurrent(oom_at=16 if model == "b" else None)
    points = run_sweep(cfg_for(tmp_path, lengths=[8, 16]), factory, log=logs.append)
    assert "profiled" in events and "timed" not in events[events.index("profiled"):]
    assert built == ["a", "b", "a", "b"]  # the timed run, then the probes
    named = [p for p in points if p["kind"] in ("context", "image_gen") and p["status"] == "ok"]
    assert len(named) == 5 and all(p["attention_backend"] == "flash" for p in named)  # b's 16 ran out of memory
    stored = speed.SpeedStore(tmp_path).load()
    assert all(p["attention_backend"] == "flash" for p in stored.values() if p["status"] == "ok")
    assert all(p["profiled_before_timing"] is False for p in stored.values())
    # A run stopped before its probes leaves pending points; the next run probes them, timing nothing.
    rows = [json.loads(l) for l in (tmp_path / "speed_points.jsonl").read_text().splitlines()]
    (tmp_path / "speed_points.jsonl").write_text("".join(
        json.dumps({**r, "attention_backend": speed.ATTENTION_PENDING} if r.get("attention_backend") else r) + "\n"
        for r in rows))
    events.clear()
    built.clear()
    run_sweep(cfg_for(tmp_path, lengths=[8, 16]), factory, log=logs.append)
    assert events == ["profiled"] * 5 and built == ["a", "b"]


def test_code_version_of_a_point_is_its_model_familys_and_the_timing_codes():
    from omnibench import speed
    versions = {m: speed.point_code_version(m) for m in ("omnimamba", "showo", "janusflow", "inception", "unregistered")}
    assert len(set(versions.values())) == 5 and versions["omnimamba"] == speed.point_code_version("omnimamba")
    # An evaluation point also depends on its task's code (the requests it times come from there).
    assert len({speed.point_code_version("omnimamba", w) for w in (None, "pope", "mme")}) == 3


def test_an_evaluation_points_code_version_covers_the_pipeline_it_times(monkeypatch, tmp_path):
    """The host preparation workers and the model call in flight (omnibench.prep, omnibench.pipeline) set an
    evaluation point's samples/s: a change there measures the evaluation points again, not the others."""
    import sys

    from omnibench import speed
    fake = tmp_path / "fake_pipeline.py"
    fake.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(speed, "EVAL_PIPELINE_MODULES", speed.EVAL_PIPELINE_MODULES + ("fake_pipeline",))
    before = {w: speed.point_code_version("omnimamba", w) for w in (None, "pope")}
    fake.write_text("X = 2\n")
    sys.modules.pop("fake_pipeline", None)
    after = {w: speed.point_code_version("omnimamba", w) for w in (None, "pope")}
    assert after[None] == before[None] and after["pope"] != before["pope"]
    assert {"omnibench.prep", "omnibench.pipeline"} <= set(speed.EVAL_PIPELINE_MODULES)


def test_point_timeout_is_recorded_and_the_sweep_goes_on(tmp_path):
    points = run_sweep(cfg_for(tmp_path, models=["slow"], lengths=[8, 16], point_timeout_s=1.0, decode_steps=200),
                       lambda m, mode: TinyRecurrent(sleep_per_step=0.05), log=lambda s: None)
    status = {p["length"]: p for p in points if p["kind"] == "context"}
    # Three or more steps fit before the deadline: the point stands on what was timed.
    assert status[8]["status"] == "ok" and 3 <= status[8]["decode_steps_timed"] < 200
    points = run_sweep(cfg_for(tmp_path / "b", models=["slower"], lengths=[8, 16], point_timeout_s=0.01),
                       lambda m, mode: TinyRecurrent(sleep_per_step=0.02), log=lambda s: None)
    status = {p["length"]: p["status"] for p in points if p["kind"] == "context"}
    assert status == {8: "timeout", 16: "skipped"}


def test_integrated_total_is_the_trapezoid_of_decode_latency_plus_prefill():
    pts = [{"kind": "context", "status": "ok", "length": 1000, "decode_seconds_per_token": 0.001},
           {"kind": "context", "status": "ok", "length": 3000, "decode_seconds_per_token": 0.003}]
    # from 500 to 1000 flat at 1 ms (0.5 s), 1000 -> 3000 linear 1 -> 3 ms (2000 * 2 ms = 4 s), + 0.25 s prefill
    assert integrated_total_seconds(pts, 3000, 0.25, 500) == pytest.approx(0.5 + 4.0 + 0.25)
    assert integrated_total_seconds(pts, 2000, 0.25, 500) is None  # no point at 2000: no claim


def test_measured_total_replaces_the_integral_when_it_fits_the_budget(tmp_path):
    points = run_sweep(cfg_for(tmp_path, models=["a"], lengths=[8, 16], full_generation_budget_s=100.0),
                       lambda m, mode: TinyRecurrent(), log=lambda s: None)
    totals = {p["length"]: p for p in with_totals(points) if p["kind"] == "context"}
    assert totals[16]["total_source"] == "measured" and totals[16]["total_seconds"] > 0


def test_reports_render_tables_ratios_and_plots(tmp_path):
    points = run_sweep(cfg_for(tmp_path, models=["omnimamba", "showo"], lengths=[8, 16384]),
                       lambda m, mode: TinyRecurrent(oom_at=16384 if m == "showo" else None), log=lambda s: None)
    paths = write_reports(points, {"command": "run_speed.py --test", "config": {"preset": "tiny"}}, tmp_path)
    md = paths["md"].read_text()
    assert "| omnimamba | best" in md and "oom" in md
    assert "119.2x" in md and "baseline point not ok" in md  # the paper's claim, and why ours is missing
    from omnibench.speed import point_code_version
    assert f"| {point_code_version('omnimamba')[:8]} |" in md  # each point's code version is shown
    for name in ("speed_time", "speed_decode", "speed_memory"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["json"].read_text())
    assert data["manifest"]["command"] == "run_speed.py --test" and len(data["points"]) == len(points)


def test_cpu_smoke_mode_through_the_cli_with_a_real_tiny_preset(tmp_path, capsys, caplog):
    from omnibench.speed_cli import main
    code = main(["--device", "cpu", "--preset", "tiny", "--max-len", "256", "--lengths", "64,256,1024",
                 "--models", "omnimamba", "--dtype", "float32", "--decode-steps", "4", "--repeats", "1",
                 "--image-batch", "2", "--eval-workloads", "pope", "--eval-samples", "3", "--eval-batch", "2",
                 "--output-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "speed.json").read_text())
    ctx = {p["length"]: p for p in data["points"] if p["kind"] == "context"}
    assert sorted(ctx) == [64, 256] and all(p["status"] == "ok" for p in ctx.values())  # 1024 > --max-len
    assert data["manifest"]["config"]["preset"] == "tiny"
    runs = [json.loads(l) for l in (tmp_path / "speed_runs.jsonl").read_text().splitlines()]
    assert len(runs) == 1 and data["runs"] == runs and "--max-len" in runs[0]["command"]
    # Rendering again measures nothing and records no run, but still reports where points came from.
    assert main(["--device", "cpu", "--preset", "tiny", "--max-len", "256", "--lengths", "64,256",
                 "--models", "omnimamba", "--dtype", "float32", "--report-only", "--output-dir", str(tmp_path)]) == 0
    assert len((tmp_path / "speed_runs.jsonl").read_text().splitlines()) == 1
    assert "Measured by" in (tmp_path / "speed.md").read_text() and runs[0]["command"] in (tmp_path / "speed.md").read_text()
    from omnibench.speed import point_code_version
    now = point_code_version("omnimamba")
    assert f"- omnimamba: points measured 3 with {now[:8]}; the checkout that rendered this report: {now[:8]} (the same)" \
        in (tmp_path / "speed.md").read_text()  # 2 context points and the image point
    # A stored point measured by other code: rendered as measured, and the report and the log say so.
    store = tmp_path / "speed_points.jsonl"
    lines = [json.loads(l) for l in store.read_text().splitlines()]
    first = next(p for p in lines if p["kind"] == "context")
    store.write_text(store.read_text() + json.dumps({**first, "code_version": "0123456789abcdef"}) + "\n")
    assert main(["--device", "cpu", "--preset", "tiny", "--max-len", "256", "--lengths", "64,256",
                 "--models", "omnimamba", "--dtype", "float32", "--report-only", "--output-dir", str(tmp_path)]) == 0
    md = (tmp_path / "speed.md").read_text()
    assert (f"- omnimamba: points measured 1 with 01234567, 2 with {now[:8]}; the checkout that rendered this report: "
            f"{now[:8]} (**measured with other code**)") in md
    assert "omnimamba: 1 point(s) in this report were measured with other code (code_version 0123456789abcdef" \
        in caplog.text
    img = next(p for p in data["points"] if p["kind"] == "image_gen")
    assert img["status"] == "ok" and img["batch"] == 2
    # POPE-shaped requests through the real tiny model's generate_text, recorded with the settings used.
    ev = next(p for p in data["points"] if p["kind"] == "eval_throughput")
    assert (ev["status"], ev["workload"], ev["samples"], ev["image_size"]) == ("ok", "pope", 3, [640, 480])
    assert ev["samples_per_second"] > 0 and ev["cuda_graphs"] is False and ev["sdpa_backends"] == "torch default"
    assert "Evaluation throughput" in (tmp_path / "speed.md").read_text()


def test_cli_rejects_unknown_model_and_mode(capsys):
    from omnibench.speed_cli import main
    assert main(["--models", "nosuch", "--device", "cpu"]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err
    assert main(["--modes", "fastest", "--device", "cpu"]) == 2
    assert "unknown mode 'fastest'" in capsys.readouterr().err


def test_gpu_points_from_sweeps_that_profiled_between_points_are_marked():
    from omnibench.speed_report import PROFILED_EARLIER, context_table, eval_table
    base = {"kind": "context", "model": "a", "mode": "best", "length": 8, "status": "ok", "prefill_seconds": 0.1,
            "decode_seconds_per_token": 0.01}
    points = [{**base, "device": "cuda"}, {**base, "device": "cuda", "length": 16, "profiled_before_timing": False},
              {**base, "device": "cpu", "length": 32}]
    assert context_table(points)["note"].tolist() == [PROFILED_EARLIER, "", ""]
    evals = [{"kind": "eval_throughput", "model": "a", "mode": "best", "workload": "pope", "status": "oom",
              "device": "cuda", "reason": "CUDA out of memory"}]
    assert eval_table(evals)["note"].tolist() == ["CUDA out of memory"]  # a failed point was not timed


def test_report_only_measures_nothing(tmp_path):
    run_sweep(cfg_for(tmp_path, models=["a"], lengths=[8]), lambda m, mode: TinyRecurrent(), log=lambda s: None)

    def never(model, mode):
        raise AssertionError("report-only built a model")
    points = run_sweep(cfg_for(tmp_path, models=["a", "b"], lengths=[8, 16], report_only=True), never,
                       log=lambda s: None)
    assert {(p["model"], p["length"]) for p in points if p["kind"] == "context"} == {("a", 8)}



class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class CostlyFirstCall(ModelAdapter, SpeedProtocol):
    """Each call at a shape it has not seen (compile, autotune, graph capture, a cuDNN plan) costs 100 s
    on a fake clock; every later call at that shape costs 1 s. A timing that includes a first call shows."""

    name = "costly_first_call"

    def __init__(self, clock):
        super().__init__()
        import threading
        self.clock, self.seen, self.sdpa_cudnn, self.lock = clock, set(), [], threading.Lock()

    def _cost(self, key):
        self.clock.t += 1.0 if key in self.seen else 100.0
        self.seen.add(key)

    def prefill(self, input_ids, max_new_tokens=0):
        self._cost(("prefill", tuple(input_ids.shape), max_new_tokens))
        self.sdpa_cudnn.append(torch.backends.cuda.cudnn_sdp_enabled())
        return {"cache": input_ids.shape[1] + max_new_tokens}  # a static cache sized by max_new_tokens

    def decode_step(self, state, token):
        self._cost(("decode", state["cache"]))
        return torch.zeros(1, 10)

    def generate_images(self, requests):
        self._cost(("images", len(requests)))
        return [Image.new("RGB", (8, 8)) for _ in requests]

    def generate_text(self, requests):
        with self.lock:  # the sweep's worker thread calls this; the fake clock is shared
            self._cost(("text", len(requests), max(len(r.prompt) for r in requests)))
        return ["yes"] * len(requests)


def test_compile_and_capture_never_fall_inside_a_timed_region(tmp_path, monkeypatch):
    from omnibench import speed
    clock = FakeClock()
    monkeypatch.setattr(speed, "CLOCK", clock)
    cfg = cfg_for(tmp_path, models=["m"], lengths=[8, 700], warmup_steps=0, repeats=2, decode_steps=3,
                  full_generation_budget_s=1e9, image_batch=4, eval_workloads=["pope"], eval_samples=5, eval_batch=2)
    points = run_sweep(cfg, lambda m, mode: CostlyFirstCall(clock), log=lambda s: None)
    ctx = {p["length"]: p for p in points if p["kind"] == "context"}
    for n, p in ctx.items():
        assert p["prefill_seconds"] == 1.0 and p["decode_seconds_per_token"] == 1.0, n
        assert p["prompt_prefill_seconds"] == 1.0  # the prompt's own prefill (640 tokens at 700), warmed too
        # Prefill of the prompt with the static cache sized for the whole generation, then one step per token.
        assert p["total_seconds_measured"] == 1.0 + (n - speed.prompt_len(n)), n
    image = next(p for p in points if p["kind"] == "image_gen")
    assert image["total_seconds"] == 1.0 and image["images_per_second"] == 4.0  # warmed at batch 4, not 1
    ev = next(p for p in points if p["kind"] == "eval_throughput")
    assert ev["total_seconds"] == 3.0 and ev["samples"] == 5  # batches of 2, 2, 1: each shape warmed
    assert ev["pass_samples_per_second"] == [5 / 3.0] * 2  # --repeats timed passes


class SlowFirstTimedPass(CostlyFirstCall):
    """Text batches cost 1 s on the fake clock, except the first `slow` batches after the untimed pass
    (`warm` batches), which cost 4 s: a one-time cost of the process that the untimed pass did not cover."""

    def __init__(self, clock, warm, slow):
        super().__init__(clock)
        self.calls, self.warm, self.slow = 0, warm, slow

    def generate_text(self, requests):
        with self.lock:
            self.calls += 1
            self.clock.t += 4.0 if self.warm < self.calls <= self.warm + self.slow else 1.0
        return ["yes"] * len(requests)


def test_an_evaluation_point_is_the_median_of_its_timed_passes_and_records_each(tmp_path, monkeypatch):
    from omnibench import speed
    clock = FakeClock()
    monkeypatch.setattr(speed, "CLOCK", clock)
    cfg = cfg_for(tmp_path, models=["m"], lengths=[8], repeats=3, eval_workloads=["pope"], eval_samples=4,
                  eval_batch=2)
    points = run_sweep(cfg, lambda m, mode: SlowFirstTimedPass(clock, warm=2, slow=2), log=lambda s: None)
    ev = next(p for p in points if p["kind"] == "eval_throughput")
    assert ev["pass_samples_per_second"] == [4 / 8.0, 4 / 2.0, 4 / 2.0]  # the first timed pass: 2 x 4 s
    assert ev["samples_per_second"] == 2.0 and ev["total_seconds"] == 2.0 and ev["repeats"] == 3
    assert ev["sweep_settings"]["repeats"] == 3  # another --repeats measures the point again


def test_as_published_runs_sdpa_without_cudnn_and_its_cudnn_row_with_it(tmp_path):
    from omnibench.speed import adapter_mode
    built, adapters = [], []

    def factory(model, mode):
        built.append(mode)
        adapters.append(CostlyFirstCall(FakeClock()))
        return adapters[-1]
    cfg = cfg_for(tmp_path, models=["m"], lengths=[8], modes=["best", "as_published", "as_published+cudnn"])
    points = run_sweep(cfg, factory, log=lambda s: None)
    assert built == ["best", "as_published", "as_published"] and adapter_mode("as_published+cudnn") == "as_published"
    cudnn = [all(a.sdpa_cudnn) if any(a.sdpa_cudnn) else not any(a.sdpa_cudnn) and not a.sdpa_cudnn for a in adapters]
    assert [set(a.sdpa_cudnn) for a in adapters] == [{True}, {False}, {True}], cudnn
    recorded = {p["mode"]: p["sdpa_backends"] for p in points if p["kind"] == "context"}
    assert recorded["as_published"] == ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"]
    assert recorded["best"] == recorded["as_published+cudnn"] == "torch default"
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored after the sweep


@pytest.mark.parametrize("names, label", [
    (["cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x128_4x1x1_kernel0_0", "gemv2T_kernel"], "cudnn"),
    (["void pytorch_flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128>>", "ampere_bf16_gemm"], "flash"),
    (["fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel)"], "efficient"),
    (["void flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>, true>"], "flash-attn"),
    (["void (anonymous namespace)::softmax_warp_forward<c10::BFloat16>", "sm90_xmma_gemm_bf16bf16"], "math"),
    (["_state_update_kernel", "_causal_conv1d_update_kernel", "gemv2T_kernel_val"], "none"),
    # a VQ decoder's convolution through cuDNN is not attention; its attention block's softmax is
    (["sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_kernel__5x_cudnn",
      "void (anonymous namespace)::softmax_warp_forward<float, float, float, 8, false, false>"], "math"),
])
def test_attention_backend_is_read_off_the_kernel_names(names, label):
    from omnibench.speed import classify_attention
    assert classify_attention(names) == label


def test_fid_wall_clock_estimate_from_the_measured_inception_rate(tmp_path):
    pytest.importorskip("cleanfid")
    from omnibench.tasks import fid
    if fid.inception_path(download=False) is None:
        pytest.skip("no Inception weights on this machine")
    points = run_sweep(cfg_for(tmp_path, models=["a"], lengths=[8], fid_features=3, fid_workers=0),
                       lambda m, mode: TinyRecurrent(), log=lambda s: None)
    feats = next(p for p in points if p["kind"] == "fid_features")
    assert feats["status"] == "ok" and feats["images"] == 3 and feats["images_per_second"] > 0
    md = write_reports(points, {"command": "t", "config": {}}, tmp_path)["md"].read_text()
    image = next(p for p in points if p["kind"] == "image_gen")
    estimate = 30000 / image["images_per_second"] / 60 + 30000 / feats["images_per_second"] / 60
    assert "FID-30K wall-clock" in md and f"{estimate:.3g}" in md


class CostlyInception:
    """A stand-in Inception on the fake clock: 100 s the first time it sees a batch size, 50 s the second
    (TorchScript's profiling executor optimises on the second run), 1 s after that."""

    stand_in = True

    def __init__(self, clock):
        self.clock, self.calls = clock, {}

    def __call__(self, batch):
        n = batch.shape[0]
        self.calls[n] = self.calls.get(n, 0) + 1
        self.clock.t += {1: 100.0, 2: 50.0}.get(self.calls[n], 1.0)
        return torch.zeros(n, 2048)


def test_fid_point_times_png_files_after_untimed_calls_at_its_batch_sizes(tmp_path, monkeypatch):
    """Files on disk as coco_fid reads them; batches of 2 here (250 in a sweep), so 5 images are a full
    batch and a partial one: both warmed twice, untimed. The point records the rate of the whole call,
    the rate after the first batch, the time to it, where the resize ran and that the weights were a
    stand-in, and the report says so."""
    pytest.importorskip("cleanfid")
    from pathlib import Path

    from omnibench import speed
    from omnibench.tasks import fid
    clock = FakeClock()
    model = CostlyInception(clock)
    monkeypatch.setattr(speed, "CLOCK", clock)
    monkeypatch.setattr(fid, "BATCH_SIZE", 2)
    monkeypatch.setattr(fid, "inception_path", lambda explicit=None, download=True: Path("stand_in.pt"))

    def load(path, device="cpu", stand_in_ok=False):
        assert stand_in_ok  # the sweep may time a stand-in; nothing else may load one
        return model
    monkeypatch.setattr(fid, "load_inception", load)
    real_features, files = fid.features, []

    def features(items, model, **kw):
        files.append([(Path(p).suffix, Path(p).is_file()) for p in items])
        return real_features(items, model, **kw)
    monkeypatch.setattr(fid, "features", features)

    point = speed._fid_features_safely(cfg_for(tmp_path, fid_features=5, fid_workers=0))
    assert files[-1] == [(".png", True)] * 5 and len(files) == 3
    assert point["status"] == "ok" and point["images"] == 5 and point["batch"] == 2
    assert point["total_seconds"] == 3.0 and point["startup_seconds"] == 1.0  # batches 2, 2, 1: warmed
    assert point["images_per_second"] == 5 / 3 and point["steady_images_per_second"] == 3 / 2
    assert point["resize"] == fid.default_resize("cpu") == "workers"
    assert point["inception_weights"] == speed.STAND_IN_WEIGHTS

    image = {"kind": "image_gen", "model": "a", "mode": "best", "status": "ok", "batch": 2, "images_per_second": 2.0,
             "total_seconds": 1.0, "device": "cpu", "dtype": "float32", "preset": "tiny", "length": 0}
    feats = {"kind": "fid_features", "model": "inception", "mode": "-", "length": 0, **point}
    md = write_reports([image, feats], {"command": "t", "config": {}}, tmp_path)["md"].read_text()
    assert "Timed with a stand-in Inception" in md and "2 images/s over the whole call" in md
