"""The engine end to end: CLI, runner, cache/resume, outputs, bad input, compare."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from omnibench import compare as compare_mod
from omnibench.cli import main
from omnibench.config import RunConfig
from omnibench.protocol import ModelAdapter, OmnibenchError
from omnibench.runner import Runner, run_dir

ROOT = Path(__file__).resolve().parent.parent


class FixedAnswers(ModelAdapter):
    """Answers every question with one fixed string and counts the samples it was asked."""
    name = "fixed"

    def __init__(self, answer="Yes, there is."):
        super().__init__()
        self.answer = answer
        self.seen: list[str] = []

    def generate_text(self, requests):
        self.seen += [r.sample_id for r in requests]
        return [self.answer for _ in requests]


def pope_cfg(tmp_path, **kw):
    return RunConfig(model="hf", model_args={"preset": "tiny"}, tasks=["pope"], task_args={"sample": "true"},
                     output_path=str(tmp_path), **kw)


def test_runner_scores_pope_sample_with_official_extraction(tmp_path):
    model = FixedAnswers("Yes, there is.")
    out = Runner(pope_cfg(tmp_path, batch_size=4, log_samples=True), lambda: model).run()
    # Built-in sample: 6 questions, 3 with answer yes. Always "yes": recall 1, precision 0.5 overall.
    assert out["results"]["pope"]["pope_yes_ratio"] == 1.0
    assert out["n_samples"]["pope"] == {"total": 6, "failed": 0, "available": 6}
    assert len(model.seen) == 6
    folder = run_dir(pope_cfg(tmp_path), out["config_hash"])
    samples = [json.loads(l) for l in (folder / "samples_pope.jsonl").read_text().splitlines()]
    assert [s["record"]["pred"] for s in samples] == ["yes"] * 6
    assert [s["doc_index"] for s in samples] == list(range(6))
    assert "POPE" in (folder / "report.md").read_text()


def test_rerun_without_resume_refuses_to_discard_finished_samples(tmp_path):
    Runner(pope_cfg(tmp_path), FixedAnswers).run()
    with pytest.raises(OmnibenchError, match="--resume"):
        Runner(pope_cfg(tmp_path), FixedAnswers).run()
    model = FixedAnswers("No")
    out = Runner(pope_cfg(tmp_path, overwrite=True), lambda: model).run()
    assert len(model.seen) == 6 and out["results"]["pope"]["pope_yes_ratio"] == 0.0


def test_resume_with_everything_done_never_loads_the_model(tmp_path):
    Runner(pope_cfg(tmp_path), FixedAnswers).run()

    def boom():
        raise AssertionError("model loaded although every sample was cached")
    out = Runner(pope_cfg(tmp_path, resume=True), boom).run()
    assert out["n_samples"]["pope"]["total"] == 6


def test_limit_and_batch_boundaries(tmp_path):
    model = FixedAnswers()
    out = Runner(pope_cfg(tmp_path, limit=5, batch_size=2), lambda: model).run()
    assert out["n_samples"]["pope"]["total"] == 5 and len(model.seen) == 5


def test_unreadable_image_is_a_failed_sample_and_the_run_goes_on(tmp_path):
    import datasets
    from omnibench.tasks.pope import sample_rows

    rows = sample_rows()
    rows[2]["image"] = {"bytes": b"not a png at all", "path": None}
    folder = tmp_path / "pope_local" / "data"
    folder.mkdir(parents=True)
    feats = datasets.Features({k: datasets.Image() if k == "image" else datasets.Value("string") for k in rows[0]})
    datasets.Dataset.from_list(rows, features=feats).to_parquet(str(folder / "test-00000-of-00001.parquet"))
    cfg = RunConfig(model="hf", tasks=["pope"], task_args={"data_dir": str(tmp_path / "pope_local")},
                    output_path=str(tmp_path / "out"), log_samples=True)
    model = FixedAnswers()
    out = Runner(cfg, lambda: model).run()
    assert out["n_samples"]["pope"] == {"total": 6, "failed": 1, "available": 6}
    assert len(model.seen) == 5
    samples = [json.loads(l) for l in (run_dir(cfg, out["config_hash"]) / "samples_pope.jsonl").read_text().splitlines()]
    failed = [s for s in samples if s["error"]]
    assert len(failed) == 1 and "unreadable image" in failed[0]["error"]
    assert failed[0]["record"]["pred"] == "none"


@pytest.mark.parametrize("argv, message", [
    (["--model", "nosuch", "--tasks", "pope"], "unknown model 'nosuch'"),
    (["--model", "hf", "--tasks", "nosuch"], "unknown task 'nosuch'"),
    (["--model", "hf", "--tasks", "pope", "--limit", "0"], "--limit 0 selects nothing"),
    (["--model", "hf", "--model_args", "pretrained", "--tasks", "pope"], "malformed --model_args entry 'pretrained'"),
    (["--model", "hf", "--tasks", "pope", "--task_args", "data_dir=/nonexistent/pope"], "dataset folder not found: /nonexistent/pope"),
    (["--model", "hf", "--model_args", "pretrained=/nonexistent/ckpt", "--tasks", "pope", "--task_args", "sample=true"],
     "checkpoint not found: /nonexistent/ckpt is not a local folder"),
])
def test_bad_input_is_one_line_error_and_nonzero_exit(argv, message, tmp_path, capsys):
    code = main(argv + ["--output_path", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1, err


def test_tasks_list_prints_registry(capsys):
    assert main(["--model", "hf", "--tasks", "list"]) == 0
    out = capsys.readouterr().out
    assert "pope" in out and "omnimamba" in out


def test_task_args_prefix_applies_to_one_task():
    from omnibench.config import scoped_args
    args = {"sample": "true", "mmmu.split": "test", "pope.split": "x"}
    assert scoped_args("mmmu", args) == {"sample": "true", "split": "test"}
    assert scoped_args("gqa", args) == {"sample": "true"}


def test_compare_flags_headline_regression_beyond_tolerance(tmp_path, capsys):
    base = {"results": {"pope": {"pope_f1": 0.80, "pope_yes_ratio": 0.5}},
            "headline": {"pope": {"metric": "pope_f1"}}}
    cand = {"results": {"pope": {"pope_f1": 0.78, "pope_yes_ratio": 0.9}},
            "headline": {"pope": {"metric": "pope_f1"}}}
    (tmp_path / "a.json").write_text(json.dumps(base))
    (tmp_path / "b.json").write_text(json.dumps(cand))
    assert compare_mod.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--tolerance", "0.01"]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert compare_mod.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--tolerance", "0.05"]) == 0
    # FID: lower is better, a rise is the regression.
    table, bad = compare_mod.compare({"results": {"fid": {"fid": 10.0}}}, {"results": {"fid": {"fid": 9.0}}}, 0.0, ["fid"])
    assert not bad
    table, bad = compare_mod.compare({"results": {"fid": {"fid": 10.0}}}, {"results": {"fid": {"fid": 11.0}}}, 0.5, ["fid"])
    assert bad


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from omnibench.models.hf import HFAdapter
    from omnibench.cli import parse_config
    from omnibench.runner import Runner

    calls_file, kill_after = sys.argv[1], int(sys.argv[2])

    class Counting(HFAdapter):
        batches = 0
        def generate_text(self, requests):
            out = super().generate_text(requests)
            with open(calls_file, "a") as fh:
                fh.write("".join(r.sample_id + "\\n" for r in requests))
            Counting.batches += 1
            if Counting.batches == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            return out

    cfg = parse_config(sys.argv[3:])
    Runner(cfg, lambda: Counting(device="cpu", **cfg.model_args)).run()
""")


def test_sigkilled_run_resumes_without_rerunning_and_ends_with_identical_scores(tmp_path):
    script = tmp_path / "killable.py"
    script.write_text(KILL_SCRIPT.format(root=str(ROOT)))
    env = {**os.environ}

    def run(out, calls, kill_after, *extra):
        argv = ["--model", "hf", "--model_args", "preset=tiny", "--tasks", "pope", "--task_args", "sample=true",
                "--batch_size", "2", "--device", "cpu", "--output_path", str(out), "--log_samples", *extra]
        return subprocess.run([sys.executable, str(script), str(calls), str(kill_after), *argv], env=env,
                              capture_output=True, text=True, timeout=300)

    clean = run(tmp_path / "clean", tmp_path / "clean_calls", 0)
    assert clean.returncode == 0, clean.stderr
    killed = run(tmp_path / "crash", tmp_path / "calls1", 2)
    assert killed.returncode == -signal.SIGKILL
    first = (tmp_path / "calls1").read_text().split()
    assert len(first) == 4  # two batches of 2 were answered; the kill hit before the second was saved
    resumed = run(tmp_path / "crash", tmp_path / "calls2", 0, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    second = (tmp_path / "calls2").read_text().split()
    assert len(second) == 4 and set(second).isdisjoint(first[:2])  # only the unsaved batch is redone
    a = json.loads(next((tmp_path / "clean").glob("*/results.json")).read_text())
    b = json.loads(next((tmp_path / "crash").glob("*/results.json")).read_text())
    assert json.dumps(a["results"], sort_keys=True) == json.dumps(b["results"], sort_keys=True)
    sa = next((tmp_path / "clean").glob("*/samples_pope.jsonl")).read_bytes()
    sb = next((tmp_path / "crash").glob("*/samples_pope.jsonl")).read_bytes()
    assert sa == sb


def test_every_task_end_to_end_with_tiny_hf_model_through_the_cli(tmp_path, capsys):
    tasks = ["pope", "mme", "vqav2", "gqa", "mmmu"]
    code = main(["--model", "hf", "--model_args", "preset=tiny", "--tasks", ",".join(tasks), "--task_args",
                 "sample=true", "--batch_size", "3", "--device", "cpu", "--output_path", str(tmp_path),
                 "--log_samples"])
    assert code == 0, capsys.readouterr().err
    folder = next(tmp_path.glob("hf_*"))
    results = json.loads((folder / "results.json").read_text())
    for task in tasks:
        head = results["headline"][task]["metric"]
        assert head in results["results"][task], (task, results["results"][task])
        assert results["n_samples"][task]["failed"] == 0
        lines = (folder / f"samples_{task}.jsonl").read_text().splitlines()
        assert len(lines) == results["n_samples"][task]["total"] > 0
        assert all(isinstance(json.loads(l)["output"], str) for l in lines)
    assert results["directions"]["pope"]["pope_yes_ratio"] == "neutral"
    assert results["directions"]["pope"]["pope_f1"] == "higher"
    manifest = results["manifest"]
    assert manifest["command"].startswith("python run_eval.py --model hf --model_args preset=tiny --tasks pope,")
    assert manifest["config"]["tasks"] == tasks and manifest["seed"] == 0 and "commit" in manifest["git"]
    assert manifest["datasets"]["pope"]["num_rows"] == 6 and manifest["packages"]["torch"]
    report = (folder / "report.md").read_text()
    assert "OmniMamba" in report and "**hf (omnibench, measured, see warnings)**" in report and "MME-P" in report
    assert "- **random weights (preset=tiny)" in report


def test_torchrun_two_ranks_shard_and_gather_to_the_single_process_scores(tmp_path):
    common = ["--model", "hf", "--model_args", "preset=tiny", "--tasks", "pope,mme", "--task_args", "sample=true",
              "--batch_size", "2", "--device", "cpu", "--log_samples"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "run_eval.py", *common, "--output_path", str(tmp_path / "one")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--standalone", "run_eval.py", *common, "--output_path", str(tmp_path / "two")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr
    two = next((tmp_path / "two").glob("hf_*"))
    assert sorted(p.name for p in (two / "cache").iterdir()) == [
        "mme.rank0.jsonl", "mme.rank1.jsonl", "pope.rank0.jsonl", "pope.rank1.jsonl"]
    a = json.loads(next((tmp_path / "one").glob("hf_*/results.json")).read_text())
    b = json.loads((two / "results.json").read_text())
    assert a["results"] == b["results"] and b["manifest"]["world_size"] == 2
    assert next((tmp_path / "one").glob("hf_*/samples_pope.jsonl")).read_bytes() == \
        (two / "samples_pope.jsonl").read_bytes()


def test_unknown_preset_names_the_model_and_the_known_ones():
    from omnibench.models.hf import HFAdapter
    with pytest.raises(OmnibenchError, match=r"model hf: unknown preset 'huge' \(known: tiny\)"):
        HFAdapter(preset="huge")


def test_out_of_memory_mid_run_keeps_finished_batches_and_says_how_to_go_on(tmp_path):
    import torch

    class RunsOut(FixedAnswers):
        def generate_text(self, requests):
            if len(self.seen) >= 4:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().generate_text(requests)

    model = RunsOut()
    with pytest.raises(OmnibenchError, match="out of memory on a batch of 2 pope samples.*--resume") as err:
        Runner(pope_cfg(tmp_path, batch_size=2), lambda: model).run()
    assert "\n" not in str(err.value)
    resumed = FixedAnswers()
    out = Runner(pope_cfg(tmp_path, batch_size=2, resume=True), lambda: resumed).run()
    assert len(resumed.seen) == 2 and out["n_samples"]["pope"]["total"] == 6


def test_lmms_eval_vocabulary_task_names_gen_kwargs_and_samples_suffix(tmp_path, capsys):
    """The issue's own command, on the hf tiny preset: lmms-eval's task name, --gen_kwargs and --verbosity."""
    argv = ["--model", "hf", "--model_args", "preset=tiny", "--tasks", "mmmu_val,pope", "--task_args", "sample=true",
            "--gen_kwargs", "max_new_tokens=3,temperature=0", "--verbosity", "INFO", "--device", "cpu",
            "--output_path", str(tmp_path), "--log_samples", "--log_samples_suffix", "run1"]
    assert main(argv) == 0, capsys.readouterr().err
    folder = next(tmp_path.glob("hf_*"))
    results = json.loads((folder / "results.json").read_text())
    assert set(results["results"]) == {"mmmu", "pope"}
    assert results["manifest"]["config"]["task_args"]["mmmu.split"] == "validation"
    assert results["manifest"]["config"]["gen_kwargs"] == {"max_new_tokens": 3}
    samples = [json.loads(l) for l in (folder / "samples_pope_run1.jsonl").read_text().splitlines()]
    assert len(samples) == 6
    # A changed --gen_kwargs changes every request: on --resume all samples are generated again.
    assert main(argv[:-2] + ["--gen_kwargs", "max_new_tokens=4", "--resume"]) == 0
    again = json.loads((folder / "results.json").read_text())
    assert again["timing"]["pope"]["generated"] == 6 and again["timing"]["pope"]["cached"] == 0
    assert main(["--tasks", "list"]) == 0
    assert "mmmu_val = mmmu split=validation" in capsys.readouterr().out


class Overlapping(ModelAdapter):
    """Its second batch does not finish until the runner has prepared the third: a runner that does the
    host-side work of batch i + 1 only after batch i (the device idle meanwhile) never sets the event. The
    first batch runs on the caller's thread (omnibench.pipeline.OneAhead), so it cannot overlap."""
    name = "overlapping"

    def __init__(self):
        super().__init__()
        import threading
        self.prepared, self.next_prepared = [], threading.Event()
        self.threads = []

    def prepare_text(self, requests):
        import threading
        self.prepared.append([r.sample_id for r in requests])
        self.threads.append(("prepare", threading.current_thread().name))
        if len(self.prepared) == 3:
            self.next_prepared.set()
        return [("ready", r) for r in requests]

    def generate_prepared(self, items):
        import threading
        self.threads.append(("generate", threading.current_thread().name))
        assert all(tag == "ready" for tag, _ in items)  # what prepare_text made, not raw requests
        if len(self.prepared) == 2:
            assert self.next_prepared.wait(timeout=60), "batch 3 was not prepared while batch 2 ran"
        return ["yes" for _ in items]


def test_next_batch_is_prepared_on_the_host_while_the_model_answers_this_one(tmp_path):
    model = Overlapping()
    out = Runner(pope_cfg(tmp_path, batch_size=2), lambda: model).run()
    assert out["n_samples"]["pope"] == {"total": 6, "failed": 0, "available": 6}
    assert [len(b) for b in model.prepared] == [2, 2, 2]
    generate_threads = [t for kind, t in model.threads if kind == "generate"]
    prepare_threads = {t for kind, t in model.threads if kind == "prepare"}
    assert generate_threads[0] in prepare_threads  # the first batch on the caller's thread
    assert set(generate_threads[1:]).isdisjoint(prepare_threads)  # then on the model's own worker thread


class FailsOnThirdBatch(FixedAnswers):
    def generate_text(self, requests):
        if len(self.seen) >= 4:
            raise RuntimeError("device lost")
        return super().generate_text(requests)


def test_a_model_error_in_flight_keeps_every_batch_finished_before_it(tmp_path):
    with pytest.raises(RuntimeError, match="device lost"):
        Runner(pope_cfg(tmp_path, batch_size=2), FailsOnThirdBatch).run()
    model = FixedAnswers()
    out = Runner(pope_cfg(tmp_path, batch_size=2, resume=True), lambda: model).run()
    assert len(model.seen) == 2 and out["n_samples"]["pope"]["total"] == 6  # only the failed batch again


def test_the_model_thread_runs_on_the_gpu_of_the_thread_that_started_it(monkeypatch):
    """Under torchrun a rank sets its GPU current; the worker thread must use that GPU, not cuda:0."""
    import threading

    import torch
    from omnibench.pipeline import OneAhead
    set_in = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: set_in.setdefault(threading.current_thread().name, d))
    ahead = OneAhead()
    ahead.swap(lambda: threading.current_thread().name, "batch 1")  # on this thread (see the next test)
    ahead.swap(lambda: threading.current_thread().name, "batch 2")
    carry, worker = ahead.swap(None)
    assert carry == "batch 2" and worker != threading.current_thread().name and set_in == {worker: 3}


def test_the_first_call_runs_on_the_callers_thread_and_answers_as_a_call_in_flight_would(monkeypatch):
    """OneAhead's first call runs here, to its end (reports/speed/README.md says why); the next swap
    returns its carry and result, or raises its error, as for a call of the worker's; later calls run on
    the worker while the caller goes on. With FIRST_ON_CALLER off every call runs on the worker."""
    import threading

    from omnibench.pipeline import OneAhead
    here, calls = threading.current_thread().name, []

    def call(tag, fail=False):
        calls.append((tag, threading.current_thread().name))
        if fail:
            raise RuntimeError(f"{tag} failed")
        return tag

    ahead = OneAhead()
    assert ahead.swap(lambda: call("one", fail=True), "c1") is None and calls == [("one", here)]
    assert ahead.busy()
    with pytest.raises(RuntimeError, match="one failed"):  # raised where a call in flight's error is
        ahead.swap(None)
    release = threading.Event()
    ahead.swap(lambda: (release.wait(60), call("two"))[1], "c2")
    calls.append(("caller went on", here))  # while the worker's call waits
    release.set()
    assert ahead.swap(None) == ("c2", "two")
    assert calls[1] == ("caller went on", here) and calls[2][0] == "two" and calls[2][1] != here
    monkeypatch.setattr(OneAhead, "FIRST_ON_CALLER", False)
    worker_only = OneAhead()
    worker_only.swap(lambda: call("three"), "c3")
    assert worker_only.swap(None) == ("c3", "three") and calls[-1][1] != here


class RecordsBatches(FixedAnswers):
    def __init__(self):
        super().__init__()
        self.batches = []

    def generate_text(self, requests):
        self.batches.append([len(r.prompt) for r in requests])
        return super().generate_text(requests)


def test_requests_are_batched_by_length_and_every_sample_is_answered_once(tmp_path):
    """MMMU's sample prompts differ in length: batches are cut from the length-sorted pool, so a batch
    holds prompts of similar length (little padding), and the scores are those of an unsorted run."""
    cfg = lambda **kw: RunConfig(model="hf", model_args={"preset": "tiny"}, tasks=["mmmu"],  # noqa: E731
                                 task_args={"sample": "true"}, output_path=str(tmp_path / kw.pop("out")), **kw)
    model = RecordsBatches()
    out = Runner(cfg(out="a", batch_size=2), lambda: model).run()
    lengths = [n for batch in model.batches for n in batch]
    assert len(lengths) == out["n_samples"]["mmmu"]["total"] == len(set(model.seen))
    assert len(set(lengths)) > 2 and lengths == sorted(lengths)  # 6 samples < one pool of 4 batches: fully sorted
    one_by_one = Runner(cfg(out="b", batch_size=1), FixedAnswers).run()
    assert out["results"] == one_by_one["results"]
