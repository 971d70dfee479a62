"""Submission files the evaluation servers and official tools accept, each checked against a hand-written
example of its official format and read back the way the official tool reads it; a test-split run that
could only write a partial file stops before generating anything, or writes none."""
import json
from pathlib import Path

import pytest

from omnibench import lmms_results
from omnibench.cli import main as run_eval
from omnibench.config import RunConfig, task_args_for
from omnibench.protocol import ModelAdapter, OmnibenchError
from omnibench.registry import get_task_class
from omnibench.runner import Runner
from omnibench.tasks import vqav2
from omnibench.tasks.gqa import GQA
from omnibench.tasks.mme import Mme
from omnibench.tasks.mmmu import MMMU


@pytest.fixture(autouse=True)
def sample_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIBENCH_CACHE", str(tmp_path / "cache"))


class Replies(ModelAdapter):
    """Answers the request of the split's i-th sample with replies[i % len(replies)], whatever order the
    runner sends the requests in (it batches them by length)."""
    name = "replies"

    def __init__(self, replies, sample_ids):
        super().__init__()
        self.replies, self.index = replies, {sample_id: i for i, sample_id in enumerate(sample_ids)}

    def generate_text(self, requests):
        return [self.replies[self.index[r.sample_id] % len(self.replies)] for r in requests]


def run(tmp_path, task, task_args, replies, **kw):
    cfg = RunConfig(model="hf", model_args={"preset": "tiny"}, tasks=[task], task_args={"sample": "true", **task_args},
                    output_path=str(tmp_path / "out"), **kw)
    ((name, args),) = task_args_for(cfg.tasks, cfg.task_args).items()
    sample_ids = get_task_class(name)(**args).docs().ids
    return Runner(cfg, lambda: Replies(replies, sample_ids)).run()


# ----------------------------------------------------------------------------- VQAv2

# The official v2_OpenEnded_mscoco_test2015_questions.json, cut down: the built-in sample's four
# test-dev questions and two more questions of the full test set.
TEST_QUESTIONS = {
    "info": {"description": "This is v2.0 of the VQA dataset.", "year": 2017, "version": "2.0"},
    "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "test2015",
    "license": {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "Creative Commons Attribution 4.0 International License"},
    "questions": [{"image_id": 900, "question": "Is there a circle in the image?", "question_id": 900000},
                  {"image_id": 901, "question": "How many squares are there?", "question_id": 901001},
                  {"image_id": 902, "question": "What shape is in the middle?", "question_id": 902002},
                  {"image_id": 903, "question": "What color is the background?", "question_id": 903003},
                  {"image_id": 262144, "question": "Is the ball flying towards the batter?", "question_id": 262144000},
                  {"image_id": 262144, "question": "What sport is this?", "question_id": 262144001}],
}
# What EvalAI takes for the test-dev phase (the official results format): every test question answered.
TESTDEV_RESULTS = [{"question_id": 900000, "answer": "yes"}, {"question_id": 901001, "answer": "2"},
                   {"question_id": 902002, "answer": "circle"}, {"question_id": 903003, "answer": "green"},
                   {"question_id": 262144000, "answer": ""}, {"question_id": 262144001, "answer": ""}]


def test_vqav2_testdev_export_answers_every_question_of_the_full_test_set(tmp_path):
    questions = tmp_path / "v2_OpenEnded_mscoco_test2015_questions.json"
    questions.write_text(json.dumps(TEST_QUESTIONS))
    out = run(tmp_path, "vqav2", {"vqav2.split": "testdev", "vqav2.test_questions": str(questions)},
              ["Yes.", "Two", "A circle", "green"])
    (path,) = map(Path, out["exports"]["vqav2"])
    assert path.name == "v2_OpenEnded_mscoco_test-dev2015_omnibench_results.json"
    assert json.loads(path.read_text()) == TESTDEV_RESULTS
    assert out["results"]["vqav2"] == {}  # nothing to score on a test split


def test_vqav2_test_split_without_the_question_file_stops_before_generating(tmp_path, capsys):
    argv = ["--model", "hf", "--model_args", "preset=tiny", "--tasks", "vqav2", "--device", "cpu",
            "--task_args", "sample=true,vqav2.split=testdev", "--output_path", str(tmp_path / "out")]
    assert run_eval(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the sample data's progress bars
    assert err.startswith("error: vqav2.split=testdev writes the evaluation server's file")
    assert "--task_args vqav2.test_questions=<path of v2_OpenEnded_mscoco_test2015_questions.json>" in err
    assert not list((tmp_path / "out").rglob("*.json*"))  # no sample generated, no file written


@pytest.mark.parametrize("content,message", [
    (None, "cannot read --task_args vqav2.test_questions="),
    ("[1, 2]", "is not an official VQA question file"),
    (json.dumps({"questions": TEST_QUESTIONS["questions"][1:]}), "1 testdev questions (e.g. 900000) are not in"),
])
def test_vqav2_wrong_question_file_is_one_line(content, message, tmp_path):
    path = tmp_path / "questions.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(OmnibenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        vqav2.VQAv2(sample="true", split="testdev", test_questions=str(path))


def test_limited_test_run_writes_no_partial_submission(tmp_path):
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps(TEST_QUESTIONS))
    out = run(tmp_path, "vqav2", {"vqav2.split": "test", "vqav2.test_questions": str(questions)}, ["yes"], limit=2)
    assert out["exports"]["vqav2"] == [] and not list((tmp_path / "out").rglob("*results.json*omnibench*"))


# ----------------------------------------------------------------------------- GQA

# The official testdev_balanced_questions.json, cut down to the built-in sample's questions (the fields
# eval.py reads: answer, isBalanced, types, groups, question, semantic).
def gqa_questions():
    specs = [("20000000", "yes", "verify"), ("20000001", "circle", "query"), ("20000002", "square", "choose"),
             ("20000003", "no", "logical")]
    return {qid: {"answer": answer, "isBalanced": True, "types": {"structural": structural, "semantic": "obj"},
                  "groups": {"global": None}, "question": "?", "semantic": []} for qid, answer, structural in specs}


def test_gqa_testdev_predictions_are_read_by_official_eval_under_its_tier_name(tmp_path):
    out = run(tmp_path, "gqa", {}, ["Yes.", "Circle", "round", "no"])
    (path,) = out["exports"]["gqa"]
    folder, tier = Path(path).parent, "testdev_balanced"
    # As eval.py --tier testdev_balanced does: its default --predictions "{tier}_predictions.json", a list
    # of {"questionId", "prediction"}, and an exception for any balanced question without a prediction.
    predictions = json.loads((folder / "{tier}_predictions.json".format(tier=tier)).read_text())
    predictions = {p["questionId"]: p["prediction"] for p in predictions}
    questions = gqa_questions()
    assert all(qid in predictions for qid in questions if questions[qid]["isBalanced"])
    official = sum(predictions[q] == questions[q]["answer"] for q in questions) / len(questions)
    assert official == out["results"]["gqa"]["gqa_accuracy"] == 0.75


# ----------------------------------------------------------------------------- MME

# The official eval_tool's input for the built-in sample, written by hand: <category>.txt, one line per
# question (image, question, ground truth, reply), an image's two questions on consecutive lines.
MME_EXISTENCE = ("0000.png\tIs there a circle in this image? Please answer yes or no.\tYes\tYes\n"
                 "0000.png\tIs there a square in this image? Please answer yes or no.\tNo\tNo, there is not.\n"
                 "0001.png\tIs there a square in this image? Please answer yes or no.\tYes\tyes really\n"
                 "0001.png\tIs there a circle in this image? Please answer yes or no.\tNo\t\n")
MME_COMMONSENSE = ("0002.png\tCould this shape roll on a flat table? Please answer yes or no.\tYes\tMaybe\n"
                   "0002.png\tDoes this shape have corners? Please answer yes or no.\tNo\tNo\n")


def official_subtask_score(text):
    """calculation.py's reading of one <category>.txt: lines in pairs, fields split at tabs, replies parsed
    from their first four characters; (acc + acc+) * 100."""
    lines = [line + "\n" for line in text.split("\n")[:-1]]
    pairs = [lines[i:i + 2] for i in range(0, len(lines), 2)]
    right, plus = [], 0
    for pair in pairs:
        assert len(pair) == 2
        hits = 0
        for line in pair:
            _, _, gt, pred = line.split("\t")
            gt, pred = gt.lower(), pred.lower()
            assert gt in ("yes", "no")
            if pred not in ("yes", "no"):
                pred = "yes" if "yes" in pred[:4] else "no" if "no" in pred[:4] else "other"
            hits += gt == pred
            right.append(gt == pred)
        plus += hits == 2
    return (sum(right) / len(right) + plus / len(pairs)) * 100


def test_mme_writes_the_official_eval_tool_files(tmp_path):
    out = run(tmp_path, "mme", {}, ["Yes", "No, there\tis not.", "yes\nreally", "", "Maybe", "No"], batch_size=6)
    files = {Path(p).name: Path(p) for p in out["exports"]["mme"]}
    assert sorted(files) == ["commonsense_reasoning.txt", "existence.txt"]
    assert all(p.parent.name == "mme_eval_tool" for p in files.values())
    assert files["existence.txt"].read_text() == MME_EXISTENCE
    assert files["commonsense_reasoning.txt"].read_text() == MME_COMMONSENSE
    for name, path in files.items():
        assert official_subtask_score(path.read_text()) == pytest.approx(
            out["results"]["mme"][f"mme_{name[:-4]}_score"])


def test_mme_limited_run_writes_no_eval_tool_files(tmp_path):
    task = Mme(sample="true")
    records = [task.process(d, "Yes") for d in task.docs()[:3]]
    assert task.export(records, tmp_path) == [] and not (tmp_path / "mme_eval_tool").exists()


# ----------------------------------------------------------------------------- MMMU

# The official "evaluation only" format (MMMU's main_eval_only.py, and the test server): id -> the
# option letter for a multiple-choice question, id -> the reply for an open one.
MMMU_TEST_SUBMISSION = {"test_Accounting_1": "B", "test_Accounting_2": "A", "test_Accounting_3": "There are 3 shapes.",
                        "test_Math_1": "", "test_Math_2": "A", "test_Math_3": "x = 2"}


def test_mmmu_test_export_is_the_official_eval_only_format(tmp_path):
    out = run(tmp_path, "mmmu", {"mmmu.split": "test"},
              ["(B) circle", "The answer is A.", "There are 3 shapes.", None, "(A)", "x = 2"], batch_size=6)
    (path,) = out["exports"]["mmmu"]
    assert json.loads(open(path).read()) == MMMU_TEST_SUBMISSION
    task = MMMU(sample="true", split="test")
    assert task.export([task.process(d, "A") for d in task.docs()[:2]], tmp_path / "limited") == []


# ----------------------------------------------------------------------------- lmms-eval results

# A results file as lmms-eval 0.7 writes it (`<output>/<model>/<date>_results.json`), written by hand for
# one task; the keys every consumer of lmms-eval results reads.
LMMS_EVAL_EXAMPLE = {
    "results": {"pope": {"alias": "pope", "pope_accuracy,none": 0.8606, "pope_accuracy_stderr,none": "N/A",
                         "pope_f1_score,none": 0.8473, "pope_f1_score_stderr,none": "N/A"}},
    "group_subtasks": {"pope": []},
    "configs": {"pope": {"task": "pope", "dataset_path": "lmms-lab/POPE", "test_split": "test",
                         "output_type": "generate_until", "num_fewshot": 0, "metadata": {"version": 0.0}}},
    "versions": {"pope": 0.0},
    "n-shot": {"pope": 0},
    "higher_is_better": {"pope": {"pope_accuracy": True, "pope_f1_score": True}},
    "n-samples": {"pope": {"original": 9000, "effective": 9000}},
    "config": {"model": "llava", "model_args": "pretrained=liuhaotian/llava-v1.5-7b", "batch_size": "1",
               "batch_sizes": [], "device": None, "use_cache": None, "limit": None, "bootstrap_iters": 100000,
               "gen_kwargs": "", "random_seed": 0, "numpy_seed": 1234, "torch_seed": 1234, "fewshot_seed": 1234},
    "git_hash": "1a2b3c4",
    "date": "20240801_120000",
    "model_name": "liuhaotian/llava-v1.5-7b",
    "model_name_sanitized": "liuhaotian__llava-v1.5-7b",
}


def test_every_run_exports_its_scores_in_lmms_eval_schema(tmp_path):
    out = run(tmp_path, "pope", {}, ["Yes", "No"])
    (path,) = out["exports"]["lmms_eval"]
    ours = json.loads(open(path).read())
    assert set(LMMS_EVAL_EXAMPLE) <= set(ours)
    assert set(LMMS_EVAL_EXAMPLE["config"]) <= set(ours["config"])
    entry = ours["results"]["pope"]
    assert entry["alias"] == "pope" and entry["pope_f1,none"] == out["results"]["pope"]["pope_f1"]
    assert entry["pope_f1_stderr,none"] == "N/A"
    for key in entry:  # as lmms-eval's table reads them: "<metric>,<filter>"
        assert key == "alias" or key.partition(",")[2] == "none"
    assert ours["n-samples"]["pope"] == {"original": 6, "effective": 6}
    assert ours["higher_is_better"]["pope"]["pope_f1"] is True and ours["higher_is_better"]["pope"]["pope_yes_ratio"] is None
    assert ours["group_subtasks"] == {"pope": []} and ours["n-shot"] == {"pope": 0}
    assert ours["config"]["model"] == "hf" and ours["config"]["model_args"] == "preset=tiny"
    assert ours["configs"]["pope"]["test_split"] == "test" and ours["configs"]["pope"]["output_type"] == "generate_until"
    assert json.loads(open(f"{out['output_dir']}/results.json").read())["exports"]["lmms_eval"] == [path]


def test_an_older_results_file_converts_from_the_command_line(tmp_path, capsys):

    committed = next(Path(__file__).resolve().parent.parent.glob("reports/ci_tiny/*/results.json"))
    assert lmms_results.main([str(committed), "--out", str(tmp_path / "lmms.json")]) == 0
    ours = json.loads((tmp_path / "lmms.json").read_text())
    assert set(ours["results"]) == {"pope", "mme", "vqav2", "gqa", "mmmu"} and ours["model_name"] == "omnimamba"
