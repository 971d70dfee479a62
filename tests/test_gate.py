"""The regression gate (`python -m omnibench.compare`) that CI relies on: every way two runs can fail to be
comparable or can differ ends in exit 1 and one stderr line naming the check and what to do; a drop
counts only beyond the task's tolerance and beyond noise (paired bootstrap on per-sample records)."""
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from omnibench import compare
from omnibench.config import RunConfig
from omnibench.paired import paired_bootstrap
from omnibench.protocol import ModelAdapter
from omnibench.runner import Runner
from omnibench.tasks.gqa import GQA, gqa_scores
from omnibench.tasks.mme import Mme, mme_scores, PERCEPTION
from omnibench.tasks.pope import Pope, SPLITS, pope_scores


def gqa_records(correct):
    return [{"question_id": str(i), "answer": "yes", "prediction": "yes" if c else "no", "pred_raw": None,
             "is_balanced": True, "structural": "verify", "semantic": "obj"} for i, c in enumerate(correct)]


def write_run(folder, correct, failed=0, content="c0ffee", log_samples=True, limit_total=None):
    """A run folder as run_eval.py leaves it for GQA: results.json and samples_gqa.jsonl."""
    records = gqa_records(correct)
    total = len(records) if limit_total is None else limit_total
    results = {
        "model": "fixed", "config_hash": "abc", "results": {"gqa": gqa_scores(records)},
        "headline": {"gqa": {"table": "table1_understanding", "column": "GQA", "metric": "gqa_accuracy", "scale": 100.0}},
        "directions": {"gqa": {m: "higher" for m in gqa_scores(records)}},
        "tolerances": {"gqa": {"gqa_accuracy": 0.01}},
        "n_samples": {"gqa": {"total": total, "failed": failed, "available": 4000}},
        "manifest": {"datasets": {"gqa": {"instructions": {"source": f"/data/{folder.name}/gqa", "split": "testdev",
                                                           "num_rows": 4000, "fingerprint": f"path-{folder.name}",
                                                           "content_sha256": content}}}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results))
    if log_samples:
        (folder / "samples_gqa.jsonl").write_text("".join(
            json.dumps({"sample_id": f"q{i}", "record": r, "error": None}) + "\n" for i, r in enumerate(records)))
    return folder / "results.json"


def flip(correct, right_to_wrong, wrong_to_right, seed=1):
    """`correct` with that many answers turned wrong and right, chosen at random (fixed seed)."""
    rng = np.random.default_rng(seed)
    out = np.array(correct, dtype=bool)
    right, wrong = np.flatnonzero(out), np.flatnonzero(~out)
    out[rng.choice(right, right_to_wrong, replace=False)] = False
    out[rng.choice(wrong, wrong_to_right, replace=False)] = True
    return out.tolist()


BASE = (np.random.default_rng(0).random(1000) < 0.6).tolist()


def gate(capsys, *argv):
    code = compare.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def test_seed_level_noise_passes_and_a_real_two_point_drop_fails(tmp_path, capsys):
    base = write_run(tmp_path / "base", BASE)
    # Another sampling seed: about a tenth of the answers change, both ways (60 right -> wrong, 48 back);
    # the mean drops 1.2 points, more than GQA's one-point tolerance, and no more than chance explains.
    noisy = write_run(tmp_path / "noisy", flip(BASE, 60, 48))
    code, out, err = gate(capsys, base, noisy)
    assert code == 0, err
    assert "within noise: the 95% interval" in out and "| ok " in out
    row = next(line for line in out.splitlines() if "gqa_accuracy" in line)
    low, high = map(float, row.split("[")[1].split("]")[0].split(","))
    assert low < 0 < high
    # A real drop: 35 right -> wrong, 15 back, 2 points.
    worse = write_run(tmp_path / "worse", flip(BASE, 35, 15))
    code, out, err = gate(capsys, base, worse)
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error: regression: gqa/gqa_accuracy: dropped by 0.02 (tolerance 0.01, 95% interval [")
    assert "--tolerance gqa_accuracy=" in err[0]
    # Without per-sample records the same drop is judged by the tolerance alone (and the table says so).
    (tmp_path / "noisy" / "samples_gqa.jsonl").unlink()
    code, out, err = gate(capsys, base, noisy)
    assert code == 1 and "| n/a " in next(line for line in out.splitlines() if "gqa_accuracy" in line)
    assert err[0].startswith("error: regression: gqa/gqa_accuracy: dropped by 0.012 (tolerance 0.01)")


def test_tolerance_overrides_per_metric_and_globally(tmp_path, capsys):
    base = write_run(tmp_path / "base", BASE, log_samples=False)
    worse = write_run(tmp_path / "worse", flip(BASE, 35, 15), log_samples=False)
    assert gate(capsys, base, worse)[0] == 1
    assert gate(capsys, base, worse, "--tolerance", "gqa_accuracy=0.03")[0] == 0
    assert gate(capsys, base, worse, "--tolerance", "0.03")[0] == 0
    # The metric's own entry wins over the global one.
    assert gate(capsys, base, worse, "--tolerance", "0.03", "--tolerance", "gqa_accuracy=0.001")[0] == 1


FAILURES = [  # (how the candidate differs, extra flags, the stderr line's start)
    ("sample_count", [], "error: sample count: gqa: the candidate scored 10 samples, the base 1000; run both on the same samples"),
    ("data", [], "error: dataset: gqa: evaluated on different data (instructions.content_sha256 'c0ffee' -> 'decaf'); "
                 "compare runs on the same dataset, or pass --allow-data-change"),
    ("failed", [], "error: failed samples: gqa (candidate): 400 of 1000 samples failed (40.0% > --max-failed-rate 1.0%); "
                   "see the error of each failed sample in samples_gqa.jsonl"),
    ("failed", ["--max-failed-rate", "0.5"], None),
    ("data", ["--allow-data-change"], None),
    ("task_set", [], "error: task set: pope: in the candidate but not in the base; compare against a base that ran it too"),
]


@pytest.mark.parametrize("change,flags,line", FAILURES, ids=[f"{c} {' '.join(f)}" for c, f, _ in FAILURES])
def test_each_comparability_check_fails_with_one_line(change, flags, line, tmp_path, capsys):
    base = write_run(tmp_path / "base", BASE)
    cand = write_run(tmp_path / "cand", BASE, failed=400 if change == "failed" else 0,
                     content="decaf" if change == "data" else "c0ffee",
                     limit_total=10 if change == "sample_count" else None)
    if change == "task_set":
        data = json.loads(cand.read_text())
        data["results"]["pope"] = {"pope_f1": 0.8}
        cand.write_text(json.dumps(data))
    code, out, err = gate(capsys, base, cand, *flags)
    if line is None:
        assert code == 0 and not err, err
        return
    assert code == 1 and len(err) == 1 and err[0].startswith(line), err
    assert "FAILED" in out.split("### Checks")[1]


def test_dataset_check_ignores_where_and_when_the_data_was_stored(tmp_path, capsys):
    # Same content digest, different local path and path-dependent `datasets` fingerprint: the same data.
    base = write_run(tmp_path / "base", BASE)
    cand = write_run(tmp_path / "elsewhere", BASE)
    code, out, err = gate(capsys, base, cand)
    assert code == 0, err
    assert "| dataset " in out and "FAILED" not in out


def test_junit_report_lists_every_check(tmp_path, capsys):
    base = write_run(tmp_path / "base", BASE)
    cand = write_run(tmp_path / "cand", flip(BASE, 35, 15), failed=400)
    report = tmp_path / "gate.xml"
    code, _, err = gate(capsys, base, cand, "--junit", report)
    assert code == 1 and len(err) == 2
    suite = ET.parse(report).getroot().find("testsuite")
    cases = {(c.get("classname"), c.get("name")): c.find("failure") for c in suite.iter("testcase")}
    assert suite.get("failures") == "2" and int(suite.get("tests")) == len(cases) == 5
    assert cases[("omnibench.compare.regression", "gqa/gqa_accuracy")].get("message").startswith("regression: dropped by")
    assert cases[("omnibench.compare.failed_samples", "gqa (candidate)")] is not None
    assert cases[("omnibench.compare.sample_count", "gqa")] is None


def test_runs_written_by_the_runner_are_paired_through_their_caches(tmp_path, capsys):
    """Two real runs without --log_samples: the gate reads each run's cache; their data digests agree."""
    class FixedAnswers(ModelAdapter):
        name = "fixed"

        def __init__(self, answer):
            super().__init__()
            self.answer = answer

        def generate_text(self, requests):
            return [self.answer] * len(requests)

    outs = {}
    for answer in ("Yes", "No"):
        cfg = RunConfig(model="hf", model_args={"preset": "tiny"}, tasks=["pope"], task_args={"sample": "true"},
                        output_path=str(tmp_path / answer))
        outs[answer] = Runner(cfg, lambda: FixedAnswers(answer)).run()
    base, cand = (f"{outs[a]['output_dir']}/results.json" for a in ("Yes", "No"))
    assert json.loads(open(base).read())["tolerances"]["pope"]["pope_f1"] == 0.01
    code, out, err = gate(capsys, base, cand)
    # Always "yes" then always "no": F1 falls from 0.667 to 0; 6 questions cannot show that beyond noise
    # everywhere, but the interval is computed from the records, and every comparability check passes.
    row = next(line for line in out.splitlines() if "pope_f1" in line)
    assert "[" in row and "no paired test" not in row
    checks = out.split("### Checks")[1]
    assert "| dataset " in checks and "| sample count " in checks and "FAILED" not in checks


def random_records(task, n, seed):
    rng = np.random.default_rng(seed)
    if task == "pope":
        return [(f"{SPLITS[i % 3]}/{i}", {"category": SPLITS[i % 3], "answer": "yes" if rng.random() < 0.5 else "no",
                                         "pred": ["yes", "no", "none"][rng.integers(0, 3)]}) for i in range(n)]
    records = []
    for image in range(n):
        category = (*PERCEPTION, "code_reasoning")[image % 11]
        for q, answer in enumerate(("yes", "no")):
            if image % 7 == 3 and q == 1:
                continue  # an image with one answer missing (a partial run) is never acc+-right
            records.append((f"{category}/{image}/{q}", {"category": category, "image": f"{category}/{image}",
                                                        "answer": answer, "pred": ["yes", "no", "other"][rng.integers(0, 3)]}))
    return records


@pytest.mark.parametrize("cls,scores,metric", [(Pope, pope_scores, "pope_f1"), (Mme, mme_scores, "mme_perception"),
                                               (GQA, gqa_scores, "gqa_accuracy")])
def test_paired_parts_sum_to_the_official_headline(cls, scores, metric):
    for seed in range(3):
        samples = random_records(cls.name, 60, seed) if cls is not GQA else \
            [(f"q{i}", r) for i, r in enumerate(gqa_records(np.random.default_rng(seed).random(50) < 0.5))]
        parts = np.array(list(cls.paired_parts(samples).values()))
        assert cls.headline_from_parts(parts.sum(axis=0)) == pytest.approx(scores([r for _, r in samples])[metric])


def test_paired_bootstrap_is_seeded_and_centred_on_the_change():
    rng = np.random.default_rng(3)
    base = np.stack([rng.random(500) < 0.5, np.ones(500)], axis=1).astype(float)
    cand = base.copy()
    cand[:40, 0] = 0.0
    ratio = lambda s: s[..., 0] / s[..., 1]  # noqa: E731
    first = paired_bootstrap(base, cand, ratio)
    assert first == paired_bootstrap(base, cand, ratio)
    change = ratio(cand.sum(0)) - ratio(base.sum(0))
    assert first[0] < change < first[1] < 0


def speed_report(gpu="Test GPU", decode=0.001, status="ok", images=None, pope=40.0, mmmu=20.0):
    point = {"kind": "context", "model": "omnimamba", "mode": "best", "length": 1024, "device": "cuda",
             "dtype": "bfloat16", "preset": "full", "model_args": "{}", "gpu": gpu, "status": status,
             "prefill_seconds": 0.05, "decode_seconds_per_token": decode, "peak_memory_bytes_torch": 2 * 1024 ** 3}
    image = {"kind": "image_gen", "model": "omnimamba", "mode": "best", "length": 0, "device": "cuda",
             "dtype": "bfloat16", "preset": "full", "model_args": "{}", "gpu": gpu, "status": "ok",
             "images_per_second": images or 5.0}
    evals = [{**{k: v for k, v in image.items() if k != "images_per_second"}, "kind": "eval_throughput",
              "workload": w, "samples_per_second": rate,
              "peak_memory_bytes_torch": (3 if w == "mmmu" else 2) * 1024 ** 3}
             for w, rate in (("pope", pope), ("mmmu", mmmu))]
    return {"schema_version": 1, "manifest": {}, "runs": [], "points": [point, image, *evals]}


SPEED_CASES = [  # (candidate, exit code, the stderr line's start)
    (speed_report(decode=0.00105), 0, None),  # 5% slower: within the 10% tolerance
    (speed_report(decode=0.0013), 1, "error: speed: omnimamba/best/1024 tokens/decode_ms_per_token: 30.0% worse (1 -> 1.3; tolerance 10%)"),
    (speed_report(images=4.0), 1, "error: speed: omnimamba/best/image_gen/images_per_s: 20.0% worse (5 -> 4; tolerance 10%)"),
    # Each benchmark shape against its own point: POPE's rate against POPE's, never MMMU's.
    (speed_report(pope=30.0), 1, "error: speed: omnimamba/best/eval_throughput/pope/samples_per_s: 25.0% worse (40 -> 30"),
    (speed_report(status="oom"), 1, "error: speed point: omnimamba/best/1024 tokens: the candidate's point is oom"),
    (speed_report(gpu="Other GPU"), 2, "error: cannot compare speed measured on different GPUs: omnimamba/best/1024 tokens on "
                                       "'Test GPU' in the base and 'Other GPU' in the candidate"),
]


@pytest.mark.parametrize("cand,code,line", SPEED_CASES, ids=["noise", "decode", "images", "eval", "oom", "gpu"])
def test_speed_reports_gate_on_relative_tolerance_and_refuse_other_gpus(cand, code, line, tmp_path, capsys):
    (tmp_path / "base.json").write_text(json.dumps(speed_report()))
    (tmp_path / "cand.json").write_text(json.dumps(cand))
    got, out, err = gate(capsys, tmp_path / "base.json", tmp_path / "cand.json")
    assert got == code, err
    if line is None:
        assert not err and "decode_ms_per_token" in out
    else:
        assert len(err) == 1 and err[0].startswith(line), err


def test_speed_tolerance_is_relative_and_overridable(tmp_path, capsys):
    (tmp_path / "base.json").write_text(json.dumps(speed_report()))
    (tmp_path / "cand.json").write_text(json.dumps(speed_report(decode=0.0013)))
    assert gate(capsys, tmp_path / "base.json", tmp_path / "cand.json", "--tolerance", "decode_ms_per_token=0.5")[0] == 0
    assert gate(capsys, tmp_path / "base.json", tmp_path / "cand.json", "--tolerance", "0.05")[0] == 1


def test_committed_speed_report_passes_against_itself(capsys):
    from pathlib import Path
    report = Path(__file__).resolve().parent.parent / "reports" / "speed" / "speed.json"
    code, out, err = gate(capsys, report, report)
    assert code == 0 and not err and out.count("| ok ") > 100


def test_content_digest_is_the_same_wherever_and_whenever_the_data_was_stored(tmp_path):
    import datasets

    from omnibench import data
    from omnibench.tasks.pope import sample_rows

    def stored(folder, rows):
        (folder / "data").mkdir(parents=True)
        features = datasets.Features({k: datasets.Image() if k == "image" else datasets.Value("string") for k in rows[0]})
        datasets.Dataset.from_list(rows, features=features).to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
        return data.fingerprint(data.load_split("lmms-lab/POPE", "test", data_dir=str(folder)), str(folder), "test")

    rows = sample_rows()
    a, b = stored(tmp_path / "a", rows), stored(tmp_path / "b", rows)
    assert a["fingerprint"] != b["fingerprint"]  # `datasets`' own: path and file times
    assert a["content_sha256"] == b["content_sha256"]
    rows[0]["answer"] = "no" if rows[0]["answer"] == "yes" else "yes"
    assert stored(tmp_path / "c", rows)["content_sha256"] != a["content_sha256"]
