"""Host-side preparation in worker processes (omnibench.prep) gives exactly the items prepare_text gives."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from omnibench.prep import HostPrep, default_workers
from omnibench.protocol import Prepared
from omnibench.registry import get_model_class
from omnibench.tasks.mmmu import MMMU
from omnibench.tasks.pope import Pope


@pytest.mark.parametrize("name", ["omnimamba", "showo", "janusflow"])
def test_worker_processes_prepare_what_prepare_text_prepares(name):
    adapter = get_model_class(name)(device="cpu", preset="tiny")
    requests = Pope.throughput_requests(3) + MMMU.throughput_requests(2)
    here = adapter.prepare_text(requests)
    workers = 2 if name == "omnimamba" else 1  # two: the batch is split in chunks and put back in order
    with HostPrep(adapter, workers=workers) as prep:
        there = prep(requests)
        assert prep.workers == workers
    assert len(there) == len(here)
    for a, b in zip(there, here):
        assert isinstance(a, Prepared) and a.request is b.request  # the caller's request, not a copy
        assert a.ids == b.ids
        assert len(a.pixels) == len(b.pixels)
        assert all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(a.pixels, b.pixels))


def test_no_workers_or_no_preprocessor_prepares_in_this_process():
    adapter = get_model_class("omnimamba")(device="cpu", preset="tiny")
    with HostPrep(adapter, workers=0) as prep:
        items = prep(Pope.throughput_requests(2))
        assert prep._pool is None and prep.workers == 0 and len(items) == 2

    class NoPreprocessor:
        def preprocessor(self):
            return None

        def prepare_text(self, requests):
            return list(requests)
    with HostPrep(NoPreprocessor(), workers=4) as prep:
        assert prep.workers == 0 and prep([1, 2]) == [1, 2] and prep._pool is None


def test_default_workers_none_on_cpu():
    assert default_workers("cpu") == 0
    assert default_workers("cuda") >= 1


def test_a_run_with_preparation_workers_answers_as_one_without(tmp_path):
    """The runner's batches prepared in a worker process give the same answers and scores, and the
    manifest records the workers (a run's identity does not change: answers do not depend on them)."""
    from omnibench.config import RunConfig
    from omnibench.runner import Runner

    outs = {}
    for workers in (0, 1):
        cfg = RunConfig(model="omnimamba", model_args={"preset": "tiny"}, tasks=["pope"],
                        task_args={"sample": "true"}, gen_kwargs={"max_new_tokens": 4}, batch_size=4,
                        prep_workers=workers, output_path=str(tmp_path / str(workers)), log_samples=True)
        outs[workers] = Runner(cfg).run()
    assert outs[1]["manifest"]["prep_workers"] == 1 and outs[0]["manifest"]["prep_workers"] == 0
    assert outs[0]["results"] == outs[1]["results"]
    answers = [{r["sample_id"]: r["output"] for r in
                map(json.loads, (Path(o["output_dir"]) / "samples_pope.jsonl").read_text().splitlines())}
               for o in (outs[0], outs[1])]
    assert answers[0] == answers[1] and len(answers[0]) == 6
    assert Path(outs[0]["output_dir"]).name == Path(outs[1]["output_dir"]).name  # same identity
