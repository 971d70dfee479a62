"""VQAv2: the official vqaEval.py rules, worked by hand, and the task end to end on the built-in sample."""
import json

import pytest
from PIL import Image

from omnibench.protocol import Doc, OmnibenchError
from omnibench.tasks import vqav2
from omnibench.tasks.common import SHORT_ANSWER as PROMPT_SUFFIX
from omnibench.tasks.vqav2 import (VQAv2, normalize_answer, process_digit_article, process_punctuation,
                         submission_answer, vqa_accuracy, vqav2_scores)


@pytest.fixture(autouse=True)
def sample_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIBENCH_CACHE", str(tmp_path / "cache"))


# --- normalisation (applied only when the humans disagree) ---------------------------------------

def test_number_words_become_digits():
    assert process_digit_article("two") == "2"
    assert process_digit_article("Ten dogs") == "10 dogs"
    assert process_digit_article("none") == "0"
    assert process_digit_article("twenty") == "twenty"  # the official map stops at ten


def test_articles_are_dropped_as_whole_words():
    assert process_digit_article("the dog") == "dog"
    assert process_digit_article("A dog") == "dog"
    assert process_digit_article("an apple") == "apple"
    assert process_digit_article("theater") == "theater"


def test_contractions_are_restored():
    assert process_digit_article("dont") == "don't"
    assert process_digit_article("it isnt") == "it isn't"
    # The official map's capitalised keys never match: text is lower-cased first.
    assert process_digit_article("Im") == "im"


def test_trailing_period_is_removed_but_decimal_point_kept():
    assert normalize_answer("yes.") == "yes"
    assert process_punctuation("3.5") == "3.5"
    assert process_punctuation(".5") == ".5"
    assert process_punctuation("a.b") == "ab"


def test_thousands_comma_deletes_every_mark():
    assert normalize_answer("1,000") == "1000"
    # With a digit,digit comma anywhere, marks are deleted, never replaced by a space.
    assert process_punctuation("1,000 (approx)") == "1000 approx"


def test_mark_next_to_space_is_deleted_otherwise_becomes_space():
    assert process_punctuation("well, no") == "well no"
    assert process_punctuation("red,blue") == "red blue"
    assert process_punctuation("t-shirt") == "t shirt"
    assert normalize_answer("hello?") == "hello"


def test_period_strip_stops_after_32_as_in_official_code():
    # The official call passes re.UNICODE (32) where re.sub takes its count.
    assert process_punctuation("." * 40 + "x") == "." * 8 + "x"


# --- leave-one-out accuracy ----------------------------------------------------------------------

@pytest.mark.parametrize("agree, expected", [
    (0, 0.0),
    # 1 agrees: leaving it out gives 0/3, each of the other 9 subsets 1/3 -> 9/3/10 = 0.3
    (1, 0.3),
    # 2 agree: the 2 subsets without one of them have 1 match (1/3), the other 8 have 2 (2/3)
    # -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    (2, 0.6),
    # 3 agree: 3 subsets with 2 matches (2/3), 7 with 3 (1) -> (2 + 7) / 10 = 0.9
    (3, 0.9),
    (4, 1.0),
])
def test_leave_one_out_accuracy(agree, expected):
    humans = ["dog"] * agree + ["cat", "horse", "cow", "sheep", "pig", "goat", "duck", "hen", "owl", "fox"][agree:]
    assert vqa_accuracy("dog", humans) == pytest.approx(expected)


def test_unanimous_humans_disable_normalisation():
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    # One dissenting human turns normalisation on for answers and prediction alike.
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["no"]) == pytest.approx(1.0)
    assert vqa_accuracy("two", ["2"] * 9 + ["3"]) == pytest.approx(1.0)


def test_human_answers_are_normalised_too():
    # "the dog" and "dog" become one answer: 2 matches -> 0.6
    assert vqa_accuracy("dog", ["the dog", "Dog."] + ["cat"] * 8) == pytest.approx(0.6)


def test_whitespace_is_cleaned_even_when_humans_agree():
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0
    assert vqa_accuracy("red\tcar", ["red car"] * 10) == 1.0


# --- submitted answer and aggregation ------------------------------------------------------------

def test_submission_answer_is_the_evalai_processing():
    assert submission_answer("Yes.") == "yes"
    assert submission_answer("Two") == "2"
    assert submission_answer("The man's hat") == "man 's hat"
    assert submission_answer("1,000") == "1000"
    assert submission_answer("What?\n") == "what"


def test_scores_per_answer_type():
    records = [{"answer_type": "yes/no", "accuracy": 1.0}, {"answer_type": "yes/no", "accuracy": 0.0},
               {"answer_type": "number", "accuracy": 0.6}, {"answer_type": "other", "accuracy": 0.3}]
    scores = vqav2_scores(records)
    assert scores["vqav2_accuracy"] == pytest.approx(1.9 / 4)
    assert scores["vqav2_yes_no_accuracy"] == pytest.approx(0.5)
    assert scores["vqav2_number_accuracy"] == pytest.approx(0.6)
    assert scores["vqav2_other_accuracy"] == pytest.approx(0.3)


def _doc(answers, answer_type="other"):
    return Doc("1", {"question_id": 1, "question": "q", "answer_type": answer_type,
                     "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                 for i, a in enumerate(answers)]})


def test_capitalised_output_scores_through_submission_processing():
    task = VQAv2.__new__(VQAv2)
    task.split = "validation"
    record = task.process(_doc(["yes"] * 10, "yes/no"), "Yes")
    assert record["answer"] == "yes" and record["accuracy"] == 1.0


def test_failed_sample_scores_zero():
    task = VQAv2.__new__(VQAv2)
    task.split = "validation"
    record = task.process(_doc([""] * 10), None)
    assert record["answer"] == "" and record["accuracy"] == 0.0


# --- end to end on the built-in sample -----------------------------------------------------------

def test_sample_validation_loads_builds_requests_and_scores(tmp_path):
    task = VQAv2(sample="true")
    assert (task.name, task.paper_column, task.paper_metric) == ("vqav2", "VQAv2(val)", "vqav2_accuracy")
    docs = task.docs()
    assert len(docs) == 4 and len({d.doc_id for d in docs}) == 4
    req = task.build_request(docs[0])
    assert req.prompt == docs[0].row["question"] + PROMPT_SUFFIX
    assert len(req.images) == 1 and isinstance(req.images[0], Image.Image) and req.images[0].mode == "RGB"
    # yes (10x yes), "one" vs 7x "1" + 2x "one" + "2", "a circle" vs 6x circle + "a circle" ..., failed
    outputs = ["Yes", "one", "A circle.", None]
    records = [task.process(d, o) for d, o in zip(docs, outputs)]
    assert [r["accuracy"] for r in records] == pytest.approx([1.0, 1.0, 1.0, 0.0])
    scores = task.aggregate(records)
    assert scores["vqav2_accuracy"] == pytest.approx(0.75)
    assert scores["vqav2_other_accuracy"] == pytest.approx(0.5)
    assert task.export(records, tmp_path) == []
    json.dumps(records)


def test_sample_testdev_is_not_scored_and_exports_every_test_question(tmp_path):
    questions = tmp_path / "v2_OpenEnded_mscoco_test2015_questions.json"
    ids = [row["question_id"] for row in vqav2.sample_rows(with_answers=False)] + [7, 8]
    questions.write_text(json.dumps({"questions": [{"question_id": q, "image_id": 0, "question": "?"} for q in ids]}))
    task = VQAv2(sample="true", split="testdev", test_questions=str(questions))
    docs = task.docs()
    assert docs[0].row["answers"] is None
    assert task.build_request(docs[0]).images
    records = [task.process(d, o) for d, o in zip(docs, ["Yes.", "Two", None, "green"])]
    assert "accuracy" not in records[0] and task.aggregate(records) == {}
    (path,) = task.export(records, tmp_path / "out")
    assert path.name == "v2_OpenEnded_mscoco_test-dev2015_omnibench_results.json"
    result = json.loads(path.read_text())
    # The split's questions answered (EvalAI answer processing), every other test question padded with "".
    assert result == [{"question_id": int(d.row["question_id"]), "answer": a}
                      for d, a in zip(docs, ["yes", "2", "", "green"])] + [{"question_id": 7, "answer": ""},
                                                                             {"question_id": 8, "answer": ""}]
    assert all(type(r["question_id"]) is int and type(r["answer"]) is str for r in result)
    # A run that answered fewer questions (--limit) writes no file at all.
    assert task.export(records[:2], tmp_path / "limited") == [] and not (tmp_path / "limited").exists()


def test_unknown_split_is_refused():
    with pytest.raises(OmnibenchError, match="split"):
        VQAv2(sample="true", split="train")


def test_official_tables_are_complete():
    assert len(vqav2.CONTRACTIONS) == 120 and vqav2.CONTRACTIONS["somebody'd"] == "somebodyd"
    assert len(vqav2.PUNCTUATION) == 21 and "'" not in vqav2.PUNCTUATION and ":" not in vqav2.PUNCTUATION
