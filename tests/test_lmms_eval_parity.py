"""Our scorers against lmms-eval's, and our models as lmms-eval models.

lmms-eval's side is its task as lmms-eval itself builds it: the task YAML read by its `load_yaml_config`
(which imports the task's utils.py), only the data source swapped for a local parquet in the hub schema,
then `ConfigurableTask.process_results` per doc and the YAML's aggregation per metric, as its evaluator
calls them. Our side is `Task.process` + `Task.aggregate` on the same rows read by our `data.load_split`.

Agreement tests use answers on which both rules agree. Where lmms-eval departs from the official scorer,
a separate test pins the difference:
- POPE: lmms-eval counts only a reply that is exactly "yes"/"no" (official: first sentence, "no"/"not");
  its yes-ratio is the share of gold "yes" (official: of predicted "yes"); its `pope` task pools the three
  splits, so we compare split by split (its pope_adv/pope_pop/pope_random) and our mean with their mean.
- MME: lmms-eval drops every "." and reads "y"/"n" as yes/no; the official rule does neither.
- VQAv2: lmms-eval normalises the answers even when all ten humans agree (official: only when they
  differ) and skips the EvalAI "'s" split that our submitted answer gets.
- GQA: lmms-eval's exact_match deletes all punctuation on both sides; official: plain equality.
- MMMU: lmms-eval scores a list-valued gold answer as its string ("['24/7', '3.429']").

Needs lmms-eval and the few packages its task code imports (recipe in omnibench/lmms.py); skipped otherwise.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean

import pytest

try:
    import lmms_eval
    import lmms_eval.models as lmms_models
    from lmms_eval.api.task import ConfigurableTask
    from lmms_eval.models.registry_v2 import ModelRegistryV2
    from lmms_eval.utils import load_yaml_config
except ImportError as exc:
    pytest.skip(f"lmms-eval's task code cannot be imported ({exc}); install it with "
                "`pip install --no-deps lmms-eval` plus loguru pytz accelerate evaluate tenacity sacrebleu",
                allow_module_level=True)

from omnibench.models import MODELS
from omnibench import data
from omnibench import lmms as lmms_plugin
from omnibench.args import Arg
from omnibench.protocol import Doc, ModelAdapter
from omnibench.registry import get_task_class
from omnibench.tasks import gqa, mme, mmmu, pope, vqav2

LMMS_TASKS = Path(lmms_eval.__file__).parent / "tasks"
IMAGE = {"bytes": data.png_bytes(data.drawn_image(0)), "path": None}

POPE_FEATURES = {"id": "string", "question_id": "string", "question": "string", "answer": "string",
                 "image_source": "string", "image": "image", "category": "string"}
MME_FEATURES = {"question_id": "string", "question": "string", "answer": "string", "category": "string",
                "image": "image"}
MMMU_FEATURES = {**{c: "string" for c in ("id", "question", "options", "explanation", "img_type", "answer",
                                          "topic_difficulty", "question_type", "subfield")},
                 **{c: "image" for c in mmmu.IMAGE_COLUMNS}}
# task -> (lmms-eval YAML, split, hub schema, image columns, a doc id for a row: MMMU's process reads it)
BENCHES = {
    "pope": ("pope/pope.yaml", "test", POPE_FEATURES, ("image",), lambda r: f"{r['category']}/{r['question_id']}"),
    "mme": ("mme/mme.yaml", "test", MME_FEATURES, ("image",), lambda r: r["question_id"]),
    "vqav2": ("vqav2/vqav2_val.yaml", "validation", vqav2.sample_features(), ("image",),
              lambda r: str(r["question_id"])),
    "gqa": ("gqa/gqa.yaml", "testdev", gqa.sample_features()[0], (), lambda r: str(r["id"])),
    "mmmu": ("mmmu/mmmu_val.yaml", "validation", MMMU_FEATURES, mmmu.IMAGE_COLUMNS, lambda r: r["id"]),
}


def lmms_task(name: str, folder: str) -> ConfigurableTask:
    """lmms-eval's task `name` reading `folder` instead of the hub (GQA's hub-only image join dropped)."""
    yaml_path, *_ = BENCHES[name]
    config = load_yaml_config(str(LMMS_TASKS / yaml_path))
    config.update(dataset_path=folder, dataset_name=None, dataset_kwargs={}, process_docs=None)
    return ConfigurableTask(config=config)


def write(name: str, rows: list[dict]) -> str:
    _, split, features, *_ = BENCHES[name]
    return data.write_sample(f"parity-{name}", rows, split, data.features_from(features))


def lmms_scores(name: str, rows: list[dict], answers: list[str]) -> dict[str, float]:
    task = lmms_task(name, write(name, rows))
    docs = list(task.eval_docs)
    assert len(docs) == len(answers)
    per_metric: dict[str, list] = defaultdict(list)
    for doc, answer in zip(docs, answers):
        for metric, value in task.process_results(doc, [answer]).items():
            per_metric[metric].append(value)
    aggregation = task.aggregation()
    return {m: aggregation[m](items) for m, items in per_metric.items() if m in aggregation}


def our_scores(name: str, rows: list[dict], answers: list[str]) -> dict[str, float]:
    _, split, _, image_columns, doc_id = BENCHES[name]
    task = get_task_class(name)(sample="true")  # the scorer only; the rows come from our loader
    ds = data.load_split("local", split, data_dir=write(name, rows), image_columns=image_columns)
    return task.aggregate([task.process(Doc(doc_id(row), row), answer) for row, answer in zip(ds, answers)])


def both(name: str, rows: list[dict], answers: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    return our_scores(name, rows, answers), lmms_scores(name, rows, answers)


# ----------------------------------------------------------------------------- POPE

def pope_rows(category: str, answers: list[str]) -> list[dict]:
    return [{"id": str(i), "question_id": f"{category}-{i}", "question": "Is there a circle in the image?",
             "answer": a, "image_source": f"drawn_{i}", "image": IMAGE, "category": category}
            for i, a in enumerate(answers)]


# gold answers and replies per split: (tp, fn, fp, tn) = (1, 1, 1, 1), (2, 0, 0, 2), (1, 2, 0, 1)
POPE_CASES = {
    "adversarial": (["yes", "yes", "no", "no"], ["Yes", "no", "yes", "No"]),
    "popular": (["yes", "no", "no", "yes"], ["yes", "no", " No ", "YES"]),
    "random": (["yes", "yes", "yes", "no"], ["No", "no", "yes", "no"]),
}


def test_pope_split_metrics_match_lmms_eval_on_plain_yes_no_replies():
    theirs_by_split = {}
    for split, (golds, replies) in POPE_CASES.items():
        ours, theirs = both("pope", pope_rows(split, golds), replies)
        theirs_by_split[split] = theirs
        for key in ("accuracy", "precision", "recall"):
            assert ours[f"pope_{split}_{key}"] == pytest.approx(theirs[f"pope_{key}"], abs=1e-12), (split, key)
        assert ours[f"pope_{split}_f1"] == pytest.approx(theirs["pope_f1_score"], abs=1e-12), split
    # Our headline numbers are over all splits: their pope_full subtasks, averaged.
    all_rows = [r for s, (g, _) in POPE_CASES.items() for r in pope_rows(s, g)]
    all_replies = [r for _, (_, replies) in POPE_CASES.items() for r in replies]
    ours_mean = our_scores("pope", all_rows, all_replies)
    assert ours_mean["pope_f1"] == pytest.approx(mean(t["pope_f1_score"] for t in theirs_by_split.values()))
    assert ours_mean["pope_f1"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)


def test_pope_lmms_eval_needs_the_bare_word_where_official_reads_the_first_sentence():
    golds = ["yes", "no"]
    ours, theirs = both("pope", pope_rows("random", golds), ["Yes, there is a circle.", "There is not."])
    assert ours["pope_random_accuracy"] == 1.0
    assert theirs["pope_accuracy"] == 0.0


def test_pope_lmms_eval_yes_ratio_counts_gold_answers_not_predictions():
    golds, replies = POPE_CASES["random"]  # 3 of 4 gold "yes", 1 of 4 predicted "yes"
    ours, theirs = both("pope", pope_rows("random", golds), replies)
    assert theirs["pope_yes_ratio"] == 0.75
    assert ours["pope_random_yes_ratio"] == 0.25


# ----------------------------------------------------------------------------- MME

def mme_rows(images: list[tuple[str, str, str]]) -> list[dict]:
    """Two questions per image, gold "Yes" then "No", as in the hub."""
    return [{"question_id": f"{category}/{name}.png", "question": f"Is there a {q}? Please answer yes or no.",
             "answer": gold, "category": category, "image": IMAGE}
            for category, name, q in images for gold in ("Yes", "No")]


MME_IMAGES = [("existence", "0001", "circle"), ("existence", "0002", "square"), ("count", "0003", "dot"),
              ("count", "0004", "ring"), ("code_reasoning", "0005", "loop"), ("code_reasoning", "0006", "bug")]
MME_REPLIES = ["Yes", "No",  # both right: acc+
               "yes, there is", "Yes.",  # second wrong
               "  YES ", "not sure",  # both right
               "There is one", "No.",  # first unparseable ("other") in both rules
               "No", "no, it is not",  # first wrong
               "Yes", "No"]


def test_mme_totals_match_lmms_eval():
    ours, theirs = both("mme", mme_rows(MME_IMAGES), MME_REPLIES)
    # existence: acc 3/4, acc+ 1/2 -> 125; count: 3/4, 1/2 -> 125; code_reasoning: 3/4, 1/2 -> 125
    assert ours["mme_perception"] == pytest.approx(theirs["mme_perception_score"], abs=1e-9)
    assert ours["mme_cognition"] == pytest.approx(theirs["mme_cognition_score"], abs=1e-9)
    assert ours["mme_perception"] == pytest.approx(250.0)
    assert ours["mme_cognition"] == pytest.approx(125.0)


def test_mme_lmms_eval_reads_single_letters_the_official_rule_does_not():
    ours, theirs = both("mme", mme_rows(MME_IMAGES[:1]), ["y", "n"])
    assert theirs["mme_perception_score"] == pytest.approx(200.0)
    assert ours["mme_perception"] == 0.0  # "y" and "n" are "other" in the official calculation.py


# ----------------------------------------------------------------------------- VQAv2

def vqa_rows(humans: list[list[str]]) -> list[dict]:
    return [{"question_type": "what", "multiple_choice_answer": max(set(h), key=h.count),
             "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(h)],
             "image_id": i, "answer_type": "other", "question_id": 1000 + i, "question": "What is it?",
             "image": IMAGE} for i, h in enumerate(humans)]


VQA_HUMANS = [["yes"] * 10, ["1"] * 7 + ["one"] * 2 + ["2"],
              ["circle"] * 6 + ["a circle", "round", "dot", "ball"],
              ["green", "green", "dark green", "olive", "brown", "green.", "gray", "khaki", "olive", "green"],
              ["green", "green", "dark green", "olive", "brown", "green.", "gray", "khaki", "olive", "green"],
              ["2"] * 5 + ["two"] * 3 + ["3"] * 2, ["red"] * 9 + ["maroon"]]
VQA_REPLIES = ["Yes", "One", "Circle.", "olive", "Dark green", "two", "blue"]


def test_vqav2_accuracy_matches_lmms_eval():
    ours, theirs = both("vqav2", vqa_rows(VQA_HUMANS), VQA_REPLIES)
    assert ours["vqav2_accuracy"] == pytest.approx(theirs["exact_match"], abs=1e-12)
    # per question: 1, 1, 1, 0.6, 0.3, 1, 0 (the official leave-one-human-out mean)
    assert ours["vqav2_accuracy"] == pytest.approx((1 + 1 + 1 + 0.6 + 0.3 + 1 + 0) / 7)


def test_vqav2_lmms_eval_normalises_unanimous_answers_and_keeps_possessives():
    humans = [["two"] * 10, ["two"] * 10, ["man's"] * 4 + ["man"] * 6]
    ours, theirs = both("vqav2", vqa_rows(humans), ["2", "two", "man's"])
    assert theirs["exact_match"] == 1.0
    # Official: ten identical answers are compared raw ("two" != "2"); our submitted answer is EvalAI's,
    # "two" -> "2" and "man's" -> "man 's".
    assert ours["vqav2_accuracy"] == 0.0


# ----------------------------------------------------------------------------- GQA

def gqa_rows(golds: list[str]) -> list[dict]:
    template = gqa.sample_rows()[0][0]
    return [{**template, "id": f"30{i:06d}", "question": "What is it?", "answer": gold,
             "types": {"structural": "query", "semantic": "obj", "detailed": "categoryThis"}}
            for i, gold in enumerate(golds)]


def test_gqa_accuracy_matches_lmms_eval():
    golds = ["yes", "circle", "square", "no", "square", "t-shirt"]
    replies = ["Yes.", "circle", "Square", " no", "circle", "t-shirt"]
    ours, theirs = both("gqa", gqa_rows(golds), replies)
    assert ours["gqa_accuracy"] == pytest.approx(theirs["exact_match"], abs=1e-12)
    assert ours["gqa_accuracy"] == pytest.approx(5 / 6)


def test_gqa_lmms_eval_ignores_punctuation_the_official_eval_compares():
    ours, theirs = both("gqa", gqa_rows(["t-shirt"]), ["tshirt"])
    assert theirs["exact_match"] == 1.0
    assert ours["gqa_accuracy"] == 0.0


# ----------------------------------------------------------------------------- MMMU

def mmmu_row(sample_id: str, options: list[str], answer: str) -> dict:
    return {"id": sample_id, "question": "Which one? <image 1>", "options": str(options), "explanation": "",
            "img_type": "['Diagrams']", "answer": answer, "topic_difficulty": "Easy",
            "question_type": "multiple-choice" if options else "open", "subfield": "x",
            "image_1": IMAGE, **{c: None for c in mmmu.IMAGE_COLUMNS[1:]}}


MMMU_CASES = [  # row, reply; six of eight right
    (mmmu_row("validation_Accounting_1", ["10", "20", "30", "40"], "B"), "B"),
    (mmmu_row("validation_Accounting_2", ["10", "20", "30", "40"], "C"), "(C)"),
    (mmmu_row("validation_Accounting_3", ["10", "20", "30", "40"], "A"), "C"),
    (mmmu_row("validation_Math_1", ["1", "2", "3", "4"], "A"), "The answer is D."),
    (mmmu_row("validation_Math_2", [], "2.5"), "The result is 2.50"),
    (mmmu_row("validation_Math_3", [], "1,000"), "1000"),
    (mmmu_row("validation_Art_1", [], "Monet"), "It was painted by Monet"),
    (mmmu_row("validation_Art_2", ["red", "blue", "green"], "B"), "I think the sky colour shown is blue"),
]


def test_mmmu_accuracy_matches_lmms_eval():
    rows, replies = [r for r, _ in MMMU_CASES], [a for _, a in MMMU_CASES]
    ours, theirs = both("mmmu", rows, replies)
    assert ours["mmmu_accuracy"] == theirs["mmmu_acc"] == 0.75  # lmms-eval rounds to 5 decimals


def test_mmmu_lmms_eval_scores_list_gold_answers_as_their_string():
    ours, theirs = both("mmmu", [mmmu_row("validation_Math_1", [], "['24/7', '3.429']")], ["3.429"])
    assert theirs["mmmu_acc"] == 0.0
    assert ours["mmmu_accuracy"] == 1.0


# ----------------------------------------------------------------------------- prompts

SAMPLES = {"pope": pope.sample_rows, "mme": mme.sample_rows, "vqav2": vqav2.sample_rows,
           "gqa": lambda: gqa.sample_rows()[0], "mmmu": lambda: mmmu.sample_rows("Accounting")}


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_prompts_and_images_match_lmms_eval_default_prompts(name):
    _, split, _, image_columns, doc_id = BENCHES[name]
    folder = write(name, SAMPLES[name]())
    theirs = lmms_task(name, folder)
    ours = get_task_class(name)(sample="true")  # GQA's images: its built-in sample has these rows' images
    ds = data.load_split("local", split, data_dir=folder, image_columns=image_columns)
    for doc, row in zip(theirs.eval_docs, ds):
        request = ours.build_request(Doc(doc_id(row), row))
        assert request.prompt == theirs.doc_to_text(doc)
        if name != "gqa":  # lmms-eval joins GQA images in a hub-only process_docs
            assert [im.size for im in request.images] == [im.size for im in theirs.doc_to_visual(doc)]


# ----------------------------------------------------------------------------- the model plugin

class ScriptedAdapter(ModelAdapter):
    """Replies `reply` followed by text after a stop string; remembers what it was asked."""

    name = "scripted"
    ARGS = (Arg("reply", str, "", "what to answer"), Arg("answer_len", int, 0, "unused: a typed argument"))
    calls: list = []

    def generate_text(self, requests):
        ScriptedAdapter.calls.append((self, list(requests)))
        return [f"{self.args['reply']}\n\nand more" for _ in requests]


def test_lmms_eval_model_turns_instances_into_requests_and_cuts_at_stop(monkeypatch):
    monkeypatch.setitem(MODELS, "scripted", f"{__name__}:ScriptedAdapter")
    monkeypatch.setattr(ScriptedAdapter, "calls", [])
    lmms_plugin.register()
    lm = lmms_models.get_model("scripted").create_from_arg_string(
        "reply=Yes,dtype=bfloat16,answer_len=1", {"batch_size": "2", "device": "cpu", "max_batch_size": None})

    task = lmms_task("pope", write("pope", pope.sample_rows()))
    task.build_all_requests(rank=0, world_size=1)
    lm.task_dict[task.config.task] = task.dataset
    outputs = lm.generate_until(task.instances)

    assert outputs == ["Yes"] * len(task.instances)  # cut at lmms-eval's default stop "\n\n"
    assert [len(reqs) for _, reqs in ScriptedAdapter.calls] == [2, 2, 2]
    adapter, _ = ScriptedAdapter.calls[0]
    assert (adapter.device, adapter.dtype) == ("cpu", "bfloat16")
    assert adapter.args == {"reply": "Yes", "answer_len": 1}  # parsed by the declaration, as in run_eval.py
    requests = [r for _, reqs in ScriptedAdapter.calls for r in reqs]
    for inst, req in zip(task.instances, requests):
        context, gen_kwargs, _, doc_id, task_name, split = inst.args
        doc = task.dataset[split][doc_id]
        assert req.sample_id == f"{task_name}/{split}/{doc_id}"
        assert req.prompt == context
        assert [im.tobytes() for im in req.images] == [doc["image"].convert("RGB").tobytes()]
        assert req.gen_kwargs["max_new_tokens"] == gen_kwargs["max_new_tokens"] == 128
        assert "until" not in req.gen_kwargs
    # and lmms-eval scores the replies
    scores = [task.process_results(task.dataset["test"][i.doc_id], [o]) for i, o in zip(task.instances, outputs)]
    assert [s["pope_accuracy"]["score"] for s in scores] == [float(r["answer"] == "yes") for r in task.dataset["test"]]


def test_lmms_eval_finds_every_adapter_through_the_entry_point(tmp_path, monkeypatch):
    dist_info = tmp_path / "omnibench_probe-0.0.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: omnibench-probe\nVersion: 0.0.0\n")
    (dist_info / "entry_points.txt").write_text("[lmms_eval.models]\nomnibench = omnibench.lmms:manifests\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests()
    assert set(MODELS) <= set(registry.list_model_names())
    cls = registry.get_model_class("omnimamba")  # imports and checks it is an lmms-eval simple model
    assert cls.adapter_name == "omnimamba" and cls.is_simple


def test_cut_at_stop_takes_the_earliest_stop_string():
    assert lmms_plugin.cut_at_stop("yes. no\n\nmore", ["\n\n", "."]) == "yes"
    assert lmms_plugin.cut_at_stop("yes", "\n") == "yes"
    assert lmms_plugin.cut_at_stop("yes", None) == "yes"
    assert lmms_plugin.cut_at_stop("yes\n", ["", "\n"]) == "yes"
