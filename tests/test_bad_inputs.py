"""Every bad input to run_eval.py is a clear error: exit code 2, one line on stderr that names the problem
(and the fix), no traceback, and a finished run in the same --output_path byte-for-byte unchanged.
tests/test_bad_inputs_speed_compare.py holds the same table for run_speed.py and omnibench.compare."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omnibench.cli import main

ROOT = Path(__file__).resolve().parent.parent
BASE = ["--model", "hf", "--model_args", "preset=tiny", "--tasks", "pope", "--task_args", "sample=true",
        "--limit", "2", "--device", "cpu"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (hf tiny preset, 2 POPE samples) that no bad input may touch."""
    out = tmp_path_factory.mktemp("finished")
    assert main(BASE + ["--output_path", str(out)]) == 0
    return out


def with_args(**replace):
    """BASE with some flags' values replaced (None drops the flag)."""
    argv, i = [], 0
    while i < len(BASE):
        flag, value = BASE[i], BASE[i + 1]
        if flag[2:] in replace:
            value = replace.pop(flag[2:])
        if value is not None:
            argv += [flag, value]
        i += 2
    for flag, value in replace.items():
        argv += [f"--{flag}"] + ([] if value is True else [value])
    return argv


def garbage_parquet(tmp: Path) -> list[str]:
    (tmp / "pope" / "data").mkdir(parents=True)
    (tmp / "pope" / "data" / "test-00000-of-00001.parquet").write_bytes(b"not parquet at all")
    return with_args(task_args=f"data_dir={tmp / 'pope'}")


def empty_folder(tmp: Path) -> list[str]:
    (tmp / "empty").mkdir()
    return with_args(task_args=f"data_dir={tmp / 'empty'}")


class Payload:
    """Anything but tensors: torch.load(weights_only=True) must refuse to unpickle it."""


def pickle_checkpoint(tmp: Path) -> list[str]:
    (tmp / "ckpt").mkdir()
    torch.save({"model": Payload()}, tmp / "ckpt" / "OmniMamba-1.3b.pth")
    return with_args(model="omnimamba", model_args=f"pretrained={tmp / 'ckpt'}")


def under_a_file(tmp: Path) -> list[str]:
    (tmp / "a_file").write_text("x")
    return with_args(output_path=str(tmp / "a_file" / "out"))


def corrupt_cache(tmp: Path, finished: Path) -> list[str]:
    shutil.copytree(finished, tmp / "copy")
    cache = next((tmp / "copy").glob("hf_*/cache/pope.rank0.jsonl"))
    cache.write_text(cache.read_text() + '["not", "a", "record"]\n')
    return with_args(output_path=str(tmp / "copy"), resume=True)


def edited_identity(tmp: Path, finished: Path) -> list[str]:
    shutil.copytree(finished, tmp / "copy")
    run_json = next((tmp / "copy").glob("hf_*/run.json"))
    data = json.loads(run_json.read_text())
    data["model_config"]["preset"] = None
    run_json.write_text(json.dumps(data))
    return with_args(output_path=str(tmp / "copy"), resume=True)


CUDA = torch.cuda.is_available()
# (id, argv or a function of (tmp, finished) giving argv, expected message fragment)
CASES = [
    ("unknown-model", with_args(model="nosuch"), "unknown model 'nosuch' (known: "),
    ("unknown-task", with_args(tasks="nosuch"), "unknown task 'nosuch' (known: "),
    ("empty-tasks", with_args(tasks=","), "--tasks is empty"),
    ("no-model", with_args(model=None), "--model is required"),
    ("limit-zero", with_args(limit="0"), "--limit 0 selects nothing"),
    ("limit-text", with_args(limit="abc"), "--limit 'abc' is not a number"),
    ("limit-fraction-above-one", with_args(limit="1.5"), "--limit 1.5 selects nothing"),
    ("batch-size-zero", with_args(batch_size="0"), "--batch_size 0 must be at least 1"),
    ("batch-size-text", with_args(batch_size="big"), "argument --batch_size: invalid int value: 'big'"),
    ("seed-text", with_args(seed="x"), "argument --seed: invalid int value: 'x'"),
    ("dtype-unknown", with_args(dtype="int8"), "argument --dtype: invalid choice: 'int8'"),
    ("verbosity-unknown", with_args(verbosity="LOUD"), "argument --verbosity: invalid choice: 'LOUD'"),
    ("unknown-flag", with_args(nosuch_flag=True), "unrecognized arguments: --nosuch_flag"),
    ("model-args-malformed", with_args(model_args="pretrained"), "malformed --model_args entry 'pretrained'"),
    ("model-args-typo", with_args(model_args="prest=tiny"), "unknown --model_args key 'prest' for model hf: did you mean 'preset'?"),
    ("model-args-bad-choice", with_args(model_args="preset=huge"), "model hf: unknown preset 'huge' (known: tiny)"),
    ("model-args-bad-int", with_args(model="omnimamba", model_args="preset=tiny,top_k=many"), "model omnimamba: top_k='many' is not an integer"),
    ("model-args-bad-float", with_args(model="showo", model_args="preset=tiny,guidance_scale=high"), "model showo: guidance_scale='high' is not a number"),
    ("model-args-bad-bool", with_args(model="omnimamba", model_args="preset=tiny,cuda_graphs=perhaps"), "model omnimamba: cuda_graphs='perhaps' is not true or false"),
    ("task-args-malformed", with_args(task_args="sample"), "malformed --task_args entry 'sample'"),
    ("task-args-typo", with_args(task_args="smaple=true"), "unknown --task_args key 'smaple': no task of pope takes it"),
    ("task-args-foreign-prefix", with_args(task_args="sample=true,mmmu.subjects=Art"), "--task_args mmmu.subjects: task 'mmmu' is not in --tasks"),
    ("task-args-bad-bool", with_args(task_args="sample=maybe"), "task pope: sample='maybe' is not true or false"),
    ("task-args-bad-split", with_args(tasks="vqav2", task_args="sample=true,split=train"), "task vqav2: unknown split 'train' (known: validation, testdev, test)"),
    ("mmmu-unknown-subject", with_args(tasks="mmmu", task_args="sample=true,subjects=Alchemy"), "unknown MMMU subject 'Alchemy'"),
    ("fid-zero-prompts", with_args(tasks="coco_fid30k", task_args="sample=true,num_prompts=0"), "num_prompts=0 selects nothing"),
    ("fid-missing-captions", with_args(tasks="coco_fid30k", task_args="captions=/nonexistent/captions.json"), "captions file not found: /nonexistent/captions.json"),
    ("data-dir-missing", with_args(task_args="data_dir=/nonexistent/pope"), "dataset folder not found: /nonexistent/pope"),
    ("data-dir-empty", empty_folder, "cannot load dataset"),
    ("source-missing", with_args(task_args="source=/nonexistent/POPE"), "dataset folder not found: /nonexistent/POPE (source= takes a local folder or a hub id"),
    ("source-and-data-dir", with_args(task_args="source=/a,data_dir=/b"), "source=/a and data_dir=/b name two sources"),
    ("config-unknown", with_args(task_args="sample=true,config=Nope"), "holds no config Nope, split test in a layout omnibench knows (it holds configs default, Full"),
    ("pope-split-unknown", with_args(task_args="sample=true,split=train"), "task pope: unknown split 'train' (known: test, adversarial, popular, random"),
    ("alias-pope-config-contradicted", with_args(tasks="pope_full", task_args="sample=true,config=default"), "--tasks pope_full means pope with config=Full, but --task_args gives config=default"),
    ("data-dir-garbage-parquet", garbage_parquet, "cannot load dataset"),
    ("checkpoint-missing", with_args(model_args="pretrained=/nonexistent/ckpt"), "/nonexistent/ckpt"),
    ("checkpoint-pickle", pickle_checkpoint, "holds pickled Python objects"),
    ("device-tpu", with_args(device="tpu"), "--device 'tpu' is not a device omnibench runs on: give cpu, cuda or cuda:N"),
    pytest.param("device-cuda-without-gpu", with_args(device="cuda"), "--device cuda but no CUDA GPU is visible to torch",
                 marks=pytest.mark.skipif(CUDA, reason="a GPU is visible")),
    pytest.param("device-cuda-index", with_args(device="cuda:7"), "--device cuda:7 but no CUDA GPU is visible",
                 marks=pytest.mark.skipif(CUDA, reason="a GPU is visible")),
    ("resume-and-overwrite", with_args(resume=True, overwrite=True), "--resume and --overwrite contradict each other"),
    ("rerun-without-resume", [], "finished samples of pope already in"),
    ("output-under-a-file", under_a_file, "cannot be a folder"),
    ("corrupt-cache-line", corrupt_cache, "corrupt cache line"),
    ("edited-run-identity", edited_identity, "holds a run of another configuration (differs in: model_config.preset"),
    ("model-args-help-unknown-model", with_args(model="nosuch", model_args="help"), "unknown model 'nosuch'"),
    ("batch-size-auto-n", with_args(batch_size="auto:4"), "argument --batch_size: 'auto:4' is not supported (lmms-eval's auto:N re-detects N times): give auto or a number"),
    ("gen-kwargs-sampling", with_args(gen_kwargs="temperature=0.7"), "--gen_kwargs temperature=0.7 is not supported: omnibench's models decode greedily"),
    ("gen-kwargs-unknown", with_args(gen_kwargs="max_length=5"), "--gen_kwargs max_length is not supported (supported: max_new_tokens"),
    ("gen-kwargs-bad-length", with_args(gen_kwargs="max_new_tokens=0"), "--gen_kwargs max_new_tokens=0: give a positive integer"),
    ("alias-contradicted", with_args(tasks="mmmu_val", task_args="sample=true,mmmu.split=test"), "--tasks mmmu_val means mmmu with split=validation, but --task_args gives split=test"),
    ("alias-twice", with_args(tasks="mmmu_val,mmmu", task_args="sample=true"), "--tasks names mmmu twice"),
    ("log-samples-suffix-path", with_args(log_samples_suffix="../x"), "--log_samples_suffix '../x': use letters"),
]


def _id(case):
    return case.values[0] if hasattr(case, "values") else case[0]


@pytest.mark.parametrize("name, argv, message", CASES, ids=[_id(c) for c in CASES])
def test_bad_input_is_one_clear_line_and_loses_nothing(name, argv, message, finished, tmp_path, capsys):
    if callable(argv):
        params = argv.__code__.co_varnames[:argv.__code__.co_argcount]
        argv = argv(tmp_path, finished) if "finished" in params else argv(tmp_path)
    argv = list(argv or BASE)
    if "--output_path" not in argv:
        argv += ["--output_path", str(finished)]
    before = snapshot(finished)
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1 and message in lines[0], err
    assert err.rstrip("\n").splitlines()[-1] == lines[0] and "Traceback" not in err
    assert snapshot(finished) == before


@pytest.mark.parametrize("argv, message", [
    (["--model", "nosuch", "--tasks", "pope"], "unknown model 'nosuch'"),
    (["--model", "hf", "--model_args", "preset=tiny,mdoe=x", "--tasks", "pope"], "unknown --model_args key 'mdoe'"),
    (["--model", "hf", "--tasks", "pope", "--device", "tpu"], "--device 'tpu' is not a device omnibench runs on"),
])
def test_the_script_itself_prints_one_line_and_no_traceback(argv, message, tmp_path):
    proc = subprocess.run([sys.executable, "run_eval.py", *argv, "--output_path", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr
