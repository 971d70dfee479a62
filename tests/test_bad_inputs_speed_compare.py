"""Every bad input to run_speed.py and `python -m omnibench.compare` ends in one line on stderr naming the
problem, a non-zero exit and no traceback, and leaves every file already written byte-identical."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omnibench import compare, speed_cli
from omnibench.config import check_device
from omnibench.protocol import OmnibenchError

ROOT = Path(__file__).resolve().parent.parent

# A finished point measured on a GPU: the store a bad command must leave untouched.
CUDA_POINT = {"kind": "context", "model": "omnimamba", "mode": "best", "length": 8, "device": "cuda",
              "dtype": "bfloat16", "preset": "full", "model_args": "{}", "gpu": "Test GPU", "status": "ok",
              "prefill_seconds": 0.01, "decode_seconds_per_token": 0.001, "decode_tokens_per_second": 1000.0,
              "decode_steps_timed": 4, "peak_memory_bytes_torch": 1000}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def call(main, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors (unknown flag, bad choice or type)
        return exc.code


def assert_one_line_error(err: str, phrase: str, prog: str) -> None:
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(("error:", f"{prog}: error:")), err
    assert phrase in last, err


@pytest.fixture
def store(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "speed_points.jsonl").write_text(json.dumps(CUDA_POINT, sort_keys=True) + "\n")
    (folder / "speed_runs.jsonl").write_text('{"command": "run_speed.py --earlier-run"}\n')
    (folder / "speed.md").write_text("# an earlier report\n")
    (tmp_path / "a_file").write_text("not a folder\n")
    return folder


SPEED_CASES = [  # (argv, exit code, phrase in the last stderr line)
    (["--device", "tpu"], 2, "--device 'tpu' is not a device omnibench runs on: give cpu, cuda or cuda:N"),
    (["--device", "cuda:x"], 2, "give cpu, cuda or cuda:N"),
    (["--lengths", "abc"], 2, "'abc' is not a whole number of tokens"),
    (["--lengths", "1,x"], 2, "'x' is not a whole number of tokens"),
    (["--lengths", ","], 2, "names no length"),
    (["--lengths", "1,64"], 2, "1 is too short (each length must be at least 2 tokens)"),
    (["--max-len", "1"], 2, "--max-len 1 must be at least 2"),
    (["--decode-steps", "0"], 2, "--decode-steps 0 must be at least 1"),
    (["--warmup-steps", "-1"], 2, "--warmup-steps -1 must be at least 0"),
    (["--repeats", "0"], 2, "--repeats 0 must be at least 1"),
    (["--point-timeout", "0"], 2, "--point-timeout 0 must be greater than 0"),
    (["--point-timeout", "nan"], 2, "--point-timeout nan must be greater than 0"),
    (["--full-budget", "-1"], 2, "--full-budget -1 must be at least 0"),
    (["--image-batch", "0"], 2, "--image-batch 0 must be at least 1"),
    (["--models", "nosuch"], 2, "unknown model 'nosuch' (known:"),
    (["--models", "hf"], 2, "model 'hf' has no prefill/decode_step"),
    (["--models", ","], 2, "--models is empty"),
    (["--modes", ""], 2, "--modes is empty"),
    (["--modes", "fastest"], 2, "unknown mode 'fastest'"),
    (["--eval-workloads", "popee"], 2, "unknown task 'popee'"),
    (["--eval-workloads", "gqa"], 2, "task 'gqa' declares no throughput workload"),
    (["--model_args", "cfg_scale"], 2, "malformed --model_args entry 'cfg_scale'"),
    (["--preset", "huge", "--models", "omnimamba"], 2, "omnimamba/best cannot be built: model omnimamba: unknown preset 'huge'"),
    (["--report-only"], 2, "no finished points for this selection"),  # the store holds only cuda points
    (["--gpu", "Test GPU"], 2, "use it with --report-only"),
    (["--output-dir", "{tmp}/a_file/speed"], 2, "a_file is a file (give a folder path)"),
    (["--output-dir", "{tmp}/a_file"], 2, "a_file is a file (give a folder path)"),
    (["--bogus"], 2, "unrecognized arguments: --bogus"),
    (["--dtype", "int8"], 2, "argument --dtype: invalid choice: 'int8'"),
    (["--decode-steps", "x"], 2, "argument --decode-steps: invalid int value: 'x'"),
    (["--verbosity", "LOUD"], 2, "argument --verbosity: invalid choice: 'LOUD'"),
]


@pytest.mark.parametrize("argv,code,phrase", SPEED_CASES, ids=[" ".join(c[0]) for c in SPEED_CASES])
def test_run_speed_bad_input_is_one_line_and_writes_nothing(argv, code, phrase, store, capsys, monkeypatch):
    built = []
    real_factory = speed_cli.registry_factory

    def recording_factory(cfg):
        build = real_factory(cfg)
        return lambda model, mode: built.append(build(model, mode)) or built[-1]
    monkeypatch.setattr(speed_cli, "registry_factory", recording_factory)
    tmp = store.parent
    argv = [a.replace("{tmp}", str(tmp)) for a in argv]
    defaults = [] if "--output-dir" in argv else ["--output-dir", str(store)]
    defaults += [] if "--device" in argv else ["--device", "cpu"]
    before = snapshot(tmp)
    assert call(speed_cli.main, argv + defaults) == code
    assert_one_line_error(capsys.readouterr().err, phrase, "run_speed.py")
    assert snapshot(tmp) == before and not built


def test_device_cuda_without_a_visible_gpu_is_one_line(store, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = snapshot(store.parent)
    for device in ("cuda", "cuda:0"):
        assert speed_cli.main(["--device", device, "--output-dir", str(store)]) == 2
        assert_one_line_error(capsys.readouterr().err,
                              f"error: --device {device} but no CUDA GPU is visible to torch (use --device cpu", "")
    assert snapshot(store.parent) == before


def test_report_only_renders_gpu_points_on_a_machine_without_cuda(store, capsys, monkeypatch):
    """--device only selects points here: re-rendering a committed GPU report needs no GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert speed_cli.main(["--report-only", "--gpu", "Test GPU", "--models", "omnimamba", "--lengths", "8",
                           "--output-dir", str(store)]) == 0, capsys.readouterr().err
    assert json.loads((store / "speed.json").read_text())["points"][0]["gpu"] == "Test GPU"


def test_check_device_accepts_cpu_cuda_and_visible_cuda_n(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [check_device(d) for d in ("cpu", "cuda", "cuda:1", " CUDA:0 ")] == ["cpu", "cuda", "cuda:1", "cuda:0"]
    with pytest.raises(OmnibenchError, match="torch sees 2 CUDA GPU"):
        check_device("cuda:2")
    with pytest.raises(OmnibenchError, match="give cpu, cuda or cuda:N"):
        check_device("mps")


def test_run_eval_checks_device_too():
    from omnibench.cli import parse_config
    with pytest.raises(OmnibenchError, match="'tpu' is not a device"):
        parse_config(["--model", "hf", "--tasks", "pope", "--device", "tpu"])


def test_default_output_dir_is_git_ignored_results_not_committed_reports():
    assert speed_cli.build_parser().parse_args([]).output_dir == "results/speed"
    assert "results/" in (ROOT / ".gitignore").read_text().splitlines()


def test_unexpected_exception_is_one_line_exit_1_and_debug_shows_traceback(store, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded\nsecond line")
    monkeypatch.setattr(speed_cli, "run_sweep", broken)
    argv = ["--device", "cpu", "--models", "omnimamba", "--output-dir", str(store)]
    assert speed_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("error: RuntimeError: kernel exploded | second line (unexpected; re-run with "
                           "--verbosity DEBUG for the traceback)")
    with pytest.raises(RuntimeError, match="kernel exploded"):
        speed_cli.main(argv + ["--verbosity", "DEBUG"])


def results(pope_f1, **extra):
    metrics = {"pope_f1": pope_f1, "pope_yes_ratio": 0.5, **extra}
    return {"results": {"pope": metrics}, "headline": {"pope": {"metric": "pope_f1"}}}


COMPARE_FILES = {
    "base.json": json.dumps(results(0.80)),
    "good.json": json.dumps(results(0.81)),
    "not_json.json": "{'results': oops",
    "list.json": "[0.8, 0.9]",
    "no_results.json": json.dumps({"pope_f1": 0.8}),
    "task_not_mapping.json": json.dumps({"results": {"pope": 0.8}}),
    "speed.json": json.dumps({"schema_version": 1, "manifest": {}, "runs": [], "points": [CUDA_POINT]}),
    "no_headline.json": json.dumps({"results": {"pope": {"pope_f1": 0.8}}}),
    "nan.json": json.dumps(results(float("nan"))),
    "null.json": json.dumps(results(None)),
    "text.json": json.dumps(results("high")),
    "headline_missing.json": json.dumps({"results": {"pope": {"pope_yes_ratio": 0.5}}}),
}

COMPARE_CASES = [  # (argv, exit code, phrase in the last stderr line)
    (["base.json", "missing.json"], 2, "cannot read results file missing.json: No such file or directory"),
    (["base.json", "."], 2, "cannot read results file .: Is a directory"),
    (["not_json.json", "base.json"], 2, "not_json.json is not JSON"),
    (["base.json", "list.json"], 2, "list.json is not a results.json: expected an object whose 'results'"),
    (["no_results.json", "base.json"], 2, "got an object without 'results'"),
    (["base.json", "task_not_mapping.json"], 2, "results['pope'] is a number, not a mapping"),
    (["speed.json", "base.json"], 2, "speed.json is a speed report written by run_speed.py, not a results.json"),
    (["base.json", "good.json", "--tolerance", "-0.1"], 2, "--tolerance -0.1 must be a finite number >= 0"),
    (["base.json", "good.json", "--tolerance", "nan"], 2, "--tolerance nan must be a finite number >= 0"),
    (["base.json", "good.json", "--tolerance", "abc"], 2, "--tolerance 'abc': give a number or metric=number"),
    (["base.json", "good.json", "--tolerance", "=1"], 2, "--tolerance '=1' names no metric"),
    (["base.json", "good.json", "--max-failed-rate", "2"], 2, "--max-failed-rate 2.0 must be a fraction"),
    (["base.json", "speed.json"], 2, "speed.json is a speed report written by run_speed.py, not a results.json"),
    (["base.json", "good.json", "--metrics", "mme_*"], 2, "'mme_*' matches no metric in either file"),
    (["no_headline.json", "good.json"], 2, "nothing to check"),
    (["base.json", "nan.json"], 1, "pope/pope_f1: the candidate's value NaN is not a finite number"),
    (["base.json", "null.json"], 1, "pope/pope_f1: the candidate's value null is not a finite number"),
    (["text.json", "base.json"], 1, "pope/pope_f1: the base's value \"high\" is not a finite number"),
    (["base.json", "headline_missing.json"], 1, "pope/pope_f1: headline metric missing from the candidate"),
]


@pytest.fixture
def compare_dir(tmp_path, monkeypatch):
    for name, text in COMPARE_FILES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("argv,code,phrase", COMPARE_CASES, ids=[" ".join(c[0]) for c in COMPARE_CASES])
def test_compare_bad_input_is_one_line(argv, code, phrase, compare_dir, capsys):
    before = snapshot(compare_dir)
    assert call(compare.main, argv) == code
    assert_one_line_error(capsys.readouterr().err, phrase, "python -m omnibench.compare")
    assert snapshot(compare_dir) == before


def test_compare_shows_unchecked_non_numbers_as_they_are(compare_dir, capsys):
    (compare_dir / "odd.json").write_text(json.dumps(results(0.81, pope_acc=None, pope_note="n/a")))
    (compare_dir / "base2.json").write_text(json.dumps(results(0.80, pope_acc=0.7, pope_note=1.0)))
    assert compare.main(["base2.json", "odd.json"]) == 0
    out = capsys.readouterr().out
    assert "| null " in out and '"n/a"' in out and "| ok " in out


def test_compare_unexpected_exception_is_one_line(compare_dir, capsys, monkeypatch):
    monkeypatch.setattr(compare, "compare", lambda *a: 1 / 0)
    assert compare.main(["base.json", "good.json"]) == 1
    assert capsys.readouterr().err.startswith("error: ZeroDivisionError: division by zero (unexpected;")


@pytest.mark.parametrize("argv,code,phrase", [
    (["run_speed.py", "--device", "tpu", "--output-dir", "{out}"], 2, "--device 'tpu' is not a device"),
    (["run_speed.py", "--device", "cpu", "--lengths", "1,x", "--output-dir", "{out}"], 2, "'x' is not a whole number"),
    (["-m", "omnibench.compare", "{tmp}/base.json", "{tmp}/speed.json"], 2, "is a speed report"),
    (["-m", "omnibench.compare", "{tmp}/base.json", "{tmp}/nan.json"], 1, "value NaN is not a finite number"),
])
def test_end_to_end_no_traceback(argv, code, phrase, store, compare_dir):
    argv = [a.replace("{out}", str(store)).replace("{tmp}", str(compare_dir)) for a in argv]
    before = snapshot(compare_dir)
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == code
    assert_one_line_error(proc.stderr, phrase, "")
    assert len(proc.stderr.strip().splitlines()) == 1 and snapshot(compare_dir) == before
