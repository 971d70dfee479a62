"""--batch_size auto: the largest batch that fits, found by halving from a cap on out-of-memory (as
accelerate's find_executable_batch_size), logged once, recorded in the manifest; the answers and their
cache identity do not depend on it."""
import json
import logging

import pytest
import torch

from omnibench import runner
from omnibench.cli import main
from omnibench.config import RunConfig
from omnibench.protocol import ModelAdapter, OmnibenchError
from omnibench.runner import Runner


class FitsThree(ModelAdapter):
    """Answers each request on its own (the answer is the prompt's length), and runs out of memory as
    a GPU would on a batch of more than `fits` requests."""

    def __init__(self, fits: int = 3, error=torch.cuda.OutOfMemoryError):
        super().__init__()
        self.fits, self.error, self.calls = fits, error, []

    def generate_text(self, requests):
        self.calls.append(len(requests))
        if len(requests) > self.fits:
            raise self.error(f"CUDA out of memory. Tried to allocate 2.00 GiB (batch of {len(requests)})")
        return [f"Yes, {len(r.prompt)}" for r in requests]


def run(tmp_path, model, batch_size, **kw):
    cfg = RunConfig(model="hf", tasks=["pope"], task_args={"sample": "true"}, batch_size=batch_size,
                    output_path=str(tmp_path / "out"), log_samples=True, **kw)
    return Runner(cfg, lambda: model).run()


def outputs(out):
    return {s["sample_id"]: s["output"] for s in map(json.loads, open(f"{out['output_dir']}/samples_pope.jsonl"))}


def test_auto_halves_from_the_cap_until_a_batch_fits_and_keeps_that_size(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(runner, "AUTO_BATCH_CAP", 16)
    model = FitsThree()
    with caplog.at_level(logging.INFO, logger="omnibench"):
        out = run(tmp_path, model, "auto")
    # POPE's sample has 6 questions: the batch of 6 fails, then batches of 3 fit.
    assert model.calls == [6, 3, 3]
    assert out["manifest"]["batch_size_chosen"] == 3 and out["manifest"]["config"]["batch_size"] == "auto"
    chosen = [r.message for r in caplog.records if r.message == "--batch_size auto: 3 samples per batch"]
    assert len(chosen) == 1
    assert out["n_samples"]["pope"]["failed"] == 0


def test_answers_and_their_identity_do_not_depend_on_the_batch_size(tmp_path):
    fixed = run(tmp_path / "one", FitsThree(), 1)
    auto = run(tmp_path / "auto", FitsThree(), "auto")
    assert outputs(auto) == outputs(fixed) and auto["config_hash"] == fixed["config_hash"]
    # A run resumed with another batch size reuses every answer.
    again = FitsThree()
    resumed = run(tmp_path / "auto", again, 2, resume=True)
    assert again.calls == [] and resumed["timing"]["pope"]["cached"] == 6


def test_an_out_of_memory_runtime_error_counts_too(tmp_path):
    model = FitsThree(fits=1, error=RuntimeError)
    out = run(tmp_path, model, "auto")
    assert model.calls[-6:] == [1] * 6 and out["manifest"]["batch_size_chosen"] == 1


def test_out_of_memory_at_one_sample_stops_the_run_naming_the_fix(tmp_path):
    with pytest.raises(OmnibenchError, match="out of memory on a batch of 1 pope samples .* re-run with a smaller"):
        run(tmp_path, FitsThree(fits=0), "auto")


def test_other_errors_are_not_retried(tmp_path):
    model = FitsThree(fits=100)
    model.generate_text = lambda requests: (_ for _ in ()).throw(ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input"):
        run(tmp_path, model, "auto")


def test_cli_accepts_auto_and_refuses_auto_n(tmp_path, capsys):
    code = main(["--model", "hf", "--model_args", "preset=tiny", "--tasks", "pope", "--task_args", "sample=true",
                 "--limit", "2", "--batch_size", "auto", "--device", "cpu", "--output_path", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    results = json.loads(next(tmp_path.glob("hf_*/results.json")).read_text())
    assert results["manifest"]["batch_size_chosen"] == runner.AUTO_BATCH_CAP  # nothing ran out of memory
    assert main(["--model", "hf", "--tasks", "pope", "--batch_size", "auto:4"]) == 2
    assert "'auto:4' is not supported" in capsys.readouterr().err
