"""Each model's tiny preset through run_eval.py on every task's built-in sample, text-to-image included."""
import json

import pytest

from omnibench.cli import main

UNDERSTANDING = ["pope", "mme", "vqav2", "gqa", "mmmu"]


def tasks_here() -> list[str]:
    from omnibench.tasks import fid
    return UNDERSTANDING + (["coco_fid30k"] if fid.inception_path(download=False) else [])


@pytest.mark.parametrize("model", ["omnimamba", "showo", "janusflow"])
def test_tiny_preset_runs_every_task_end_to_end(model, tmp_path, capsys):
    tasks = tasks_here()
    code = main(["--model", model, "--model_args", "preset=tiny", "--tasks", ",".join(tasks), "--task_args",
                 "sample=true", "--batch_size", "3", "--device", "cpu", "--output_path", str(tmp_path),
                 "--log_samples"])
    assert code == 0, capsys.readouterr().err
    folder = next(tmp_path.glob(f"{model}_*"))
    results = json.loads((folder / "results.json").read_text())
    for task in tasks:
        assert results["headline"][task]["metric"] in results["results"][task], task
        assert results["n_samples"][task]["failed"] == 0, task
        samples = [json.loads(l) for l in (folder / f"samples_{task}.jsonl").read_text().splitlines()]
        assert len(samples) == results["n_samples"][task]["total"] > 0
    if "coco_fid30k" in tasks:
        images = sorted((folder / "images" / "coco_fid30k").glob("*.png"))
        assert len(images) == results["n_samples"]["coco_fid30k"]["total"]
        assert results["results"]["coco_fid30k"]["fid"] > 0
    report = (folder / "report.md").read_text()
    assert f"**{model} (omnibench, measured, see warnings)**" in report
    assert results["warnings"][0].startswith("random weights (preset=tiny)") and results["warnings"][0] in report
