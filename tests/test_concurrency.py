"""Shared artefacts (built-in samples, tiny presets, FID statistics) under concurrent builders: one
process builds, everyone else waits and then reads a complete folder; a half-built folder is rebuilt."""
import functools
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omnibench import data

ROOT = Path(__file__).resolve().parent.parent
PARTS = 4


def build_slowly(tmp: Path, log: Path) -> None:
    """A build that takes a while, so that a second unguarded builder would overlap it; `log` gets one
    line per build that ran."""
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    for k in range(PARTS):
        (tmp / f"part{k}").write_text(str(k))
        time.sleep(0.05)


def build_until_killed(tmp: Path, started: Path) -> None:
    (tmp / "part0").write_text("0")
    started.write_text("")
    time.sleep(600)


def assert_complete(folder: Path) -> None:
    assert (folder / data.COMPLETE).is_file()
    assert sorted(p.name for p in folder.iterdir()) == sorted([data.COMPLETE, *(f"part{k}" for k in range(PARTS))])
    assert [(folder / f"part{k}").read_text() for k in range(PARTS)] == [str(k) for k in range(PARTS)]


def build_at_once(folder: str, log: str, barrier) -> None:
    barrier.wait()  # every process reaches build_once together
    assert_complete(data.build_once(Path(folder), functools.partial(build_slowly, log=Path(log))))


def no_leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp" in p.name]


def test_processes_building_one_artefact_at_once_run_one_build_and_all_see_it_complete(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    folder, log = tmp_path / "cache" / "artefact", tmp_path / "builds.log"
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=build_at_once, args=(str(folder), str(log), barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 4
    assert len(log.read_text().splitlines()) == 1
    assert_complete(folder)
    assert no_leftovers(folder.parent) == []


def test_a_builder_killed_mid_build_publishes_nothing_and_the_next_one_builds(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    folder, started, log = tmp_path / "cache" / "artefact", tmp_path / "started", tmp_path / "builds.log"
    killed = ctx.Process(target=data.build_once, args=(folder, functools.partial(build_until_killed, started=started)))
    killed.start()
    deadline = time.monotonic() + 120
    while not started.exists() and killed.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the builder never started"
    killed.kill()  # SIGKILL while holding the lock: the OS frees it
    killed.join()
    assert not folder.exists() and no_leftovers(folder.parent) == [f"artefact.tmp{killed.pid}"]
    assert_complete(data.build_once(folder, functools.partial(build_slowly, log=log)))
    assert no_leftovers(folder.parent) == [] and len(log.read_text().splitlines()) == 1


def test_a_folder_without_its_completion_marker_is_rebuilt_and_a_complete_one_reused(tmp_path):
    folder, log = tmp_path / "cache" / "artefact", tmp_path / "builds.log"
    (folder / "part0").mkdir(parents=True)  # e.g. a copy interrupted half-way, or an older cache layout
    (folder / "part1").write_text("half")
    assert_complete(data.build_once(folder, functools.partial(build_slowly, log=log)))
    assert_complete(data.build_once(folder, functools.partial(build_slowly, log=log)))
    assert len(log.read_text().splitlines()) == 1


def test_a_failed_build_publishes_nothing(tmp_path):
    folder = tmp_path / "cache" / "artefact"

    def fails(tmp: Path) -> None:
        (tmp / "part0").write_text("0")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        data.build_once(folder, fails)
    assert not folder.exists() and no_leftovers(folder.parent) == []


def test_hf_tiny_preset_built_by_rank_1_is_complete(tmp_path, monkeypatch):
    """transformers' save_pretrained writes no weights on torch.distributed ranks other than 0: the rank
    that wins the build lock must still write a complete preset (the reported bug: rank 1's folder
    without config.json or weights was published, and every later run failed)."""
    import torch.distributed as dist

    from omnibench.models.hf import resolve_tiny
    monkeypatch.setenv("OMNIBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    folder = resolve_tiny()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert (folder / data.COMPLETE).is_file()


@pytest.mark.parametrize("model", ["hf", "omnimamba", "showo", "janusflow"])
def test_torchrun_two_ranks_on_a_fresh_cache_pass_every_time(tmp_path, model):
    """Both ranks build the tiny preset and the sample data at the same moment; three fresh caches."""
    for attempt in range(3):
        run = tmp_path / str(attempt)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMNIBENCH_CACHE": str(run / "cache"),
               "HF_DATASETS_CACHE": str(run / "hf_datasets")}
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "run_eval.py",
             "--model", model, "--model_args", "preset=tiny", "--tasks", "pope", "--task_args", "sample=true",
             "--limit", "4", "--batch_size", "2", "--device", "cpu", "--output_path", str(run / "out")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"attempt {attempt}: {proc.stderr[-3000:]}"
        results = json.loads(next((run / "out").glob(f"{model}_*/results.json")).read_text())
        assert results["n_samples"]["pope"] == {**results["n_samples"]["pope"], "total": 4, "failed": 0}
        built = [p for p in (run / "cache").glob("*/*") if p.is_dir()]
        assert len(built) == 2 and all((p / data.COMPLETE).is_file() for p in built), built
        assert [p.name for p in (run / "cache").glob("*/*.tmp*")] == []
