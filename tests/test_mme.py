import random

import pytest
from PIL import Image

from omnibench.protocol import Doc
from omnibench.tasks.mme import (POST_PROMPT, Mme, extract_answer, image_key, mme_prompt, mme_scores,
                       subtask_scores)


def rec(category, image, answer, pred):
    return {"category": category, "image": f"{category}/{image}", "answer": answer, "pred": pred}


@pytest.mark.parametrize("text,label", [
    ("Yes", "yes"), ("yes", "yes"), ("YES", "yes"), ("Yes, it is.", "yes"), ("Yes.", "yes"),
    ("No.", "no"), ("no", "no"), ("No, there is not.", "no"), ("  no\n", "no"),
    # the official rule reads only the first 4 characters, "yes" before "no"
    ("Not really", "no"), ("Nope", "no"), ("Eyes are closed", "yes"), ("no, yes", "no"),
    # neither: "other", which matches neither ground truth
    ("There is a dog.", "other"), ("I think yes", "other"), ("", "other"),
    # one letter: lmms-eval maps y/n, the official script does not
    ("y", "other"), ("n", "other"),
])
def test_extraction_follows_official_first_four_characters(text, label):
    assert extract_answer(text) == label


def test_acc_and_acc_plus_hand_worked_for_one_subtask():
    records = [
        rec("count", "1.png", "yes", "yes"), rec("count", "1.png", "no", "no"),      # both right
        rec("count", "2.png", "yes", "yes"), rec("count", "2.png", "no", "yes"),     # one right
        rec("count", "3.png", "yes", "other"), rec("count", "3.png", "no", "yes"),   # none right
    ]
    m = subtask_scores(records)["count"]
    assert m["acc"] == pytest.approx(3 / 6)
    assert m["acc_plus"] == pytest.approx(1 / 3)
    assert m["score"] == pytest.approx((0.5 + 1 / 3) * 100)
    out = mme_scores(records)
    assert out["mme_count_acc"] == pytest.approx(0.5)
    assert out["mme_count_acc_plus"] == pytest.approx(1 / 3)
    assert out["mme_count_score"] == pytest.approx(83.3333333)


def test_perception_and_cognition_totals_sum_their_own_subtasks():
    records = [
        # existence: all right -> 100 + 100 = 200
        rec("existence", "a.jpg", "yes", "yes"), rec("existence", "a.jpg", "no", "no"),
        rec("existence", "b.jpg", "yes", "yes"), rec("existence", "b.jpg", "no", "no"),
        # color: 3/4 right, 1/2 images -> 75 + 50 = 125
        rec("color", "a.jpg", "yes", "yes"), rec("color", "a.jpg", "no", "no"),
        rec("color", "b.jpg", "yes", "yes"), rec("color", "b.jpg", "no", "yes"),
        # OCR: 1/2 right, 0/1 images -> 50
        rec("OCR", "c.jpg", "yes", "no"), rec("OCR", "c.jpg", "no", "no"),
        # cognition: 2/2 -> 200, must not leak into perception
        rec("code_reasoning", "d.png", "yes", "yes"), rec("code_reasoning", "d.png", "no", "no"),
    ]
    out = mme_scores(records)
    assert out["mme_existence_score"] == pytest.approx(200)
    assert out["mme_color_score"] == pytest.approx(125)
    assert out["mme_OCR_score"] == pytest.approx(50)
    assert out["mme_perception"] == pytest.approx(200 + 125 + 50)
    assert out["mme_cognition"] == pytest.approx(200)


def test_images_grouped_by_id_not_by_row_order():
    records = [
        rec("scene", "1.jpg", "yes", "yes"), rec("scene", "2.jpg", "yes", "yes"),
        rec("scene", "1.jpg", "no", "no"), rec("scene", "2.jpg", "no", "yes"),
        # same file name in another subtask is another image
        rec("posters", "1.jpg", "yes", "no"), rec("posters", "1.jpg", "no", "no"),
    ]
    expected = mme_scores(records)
    assert expected["mme_scene_acc_plus"] == pytest.approx(0.5)
    assert expected["mme_posters_acc_plus"] == 0.0
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    assert mme_scores(shuffled) == pytest.approx(expected)


def test_image_with_a_missing_answer_is_never_acc_plus_correct():
    m = subtask_scores([rec("landmark", "x.jpg", "yes", "yes")])["landmark"]
    assert m["acc"] == 1.0 and m["acc_plus"] == 0.0


def test_totals_absent_when_no_subtask_of_that_group_ran():
    out = mme_scores([rec("artwork", "1.jpg", "yes", "yes"), rec("artwork", "1.jpg", "no", "no")])
    assert out["mme_perception"] == pytest.approx(200)
    assert "mme_cognition" not in out


def test_failed_sample_counts_as_wrong_and_breaks_its_pair(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIBENCH_CACHE", str(tmp_path))
    task = Mme(sample="true")
    row = {"question_id": "celebrity/tt0001.jpg", "question": "Is the actor inside the red box named X? "
           "Please answer yes or no.", "answer": "Yes", "category": "celebrity"}
    failed = task.process(Doc("celebrity/tt0001.jpg/0", row), None)
    right = task.process(Doc("celebrity/tt0001.jpg/1", {**row, "answer": "No"}), "No")
    assert failed["pred"] != failed["answer"]
    out = task.aggregate([failed, right])
    assert out["mme_celebrity_acc"] == pytest.approx(0.5)
    assert out["mme_celebrity_acc_plus"] == 0.0


def test_image_key_adds_category_only_when_missing():
    assert image_key({"question_id": "code_reasoning/0020.png", "category": "code_reasoning"}) == \
        "code_reasoning/0020.png"
    assert image_key({"question_id": "0020.png", "category": "code_reasoning"}) == "code_reasoning/0020.png"


def test_prompt_is_lmms_eval_default():
    q = "Is there a dog in this image? Please answer yes or no."
    assert mme_prompt(q) == "Is there a dog in this image?\nAnswer the question using a single word or phrase."


def test_sample_loads_through_datasets_and_scores_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIBENCH_CACHE", str(tmp_path))
    task = Mme(sample="true")
    assert (task.name, task.paper_column, task.paper_metric) == ("mme", "MME-P", "mme_perception")
    docs = task.docs()
    ids = [d.doc_id for d in docs]
    assert len(docs) == 6 and len(set(ids)) == 6
    assert [d.doc_id for d in Mme(sample="true").docs()] == ids  # stable
    req = task.build_request(docs[0])
    assert req.sample_id == ids[0]
    assert len(req.images) == 1 and isinstance(req.images[0], Image.Image) and req.images[0].mode == "RGB"
    assert req.prompt.endswith(POST_PROMPT) and "Please answer yes or no." not in req.prompt

    perfect = task.aggregate([task.process(d, d.row["answer"] + ".") for d in docs])
    assert perfect["mme_existence_score"] == pytest.approx(200)
    assert perfect["mme_perception"] == pytest.approx(200)
    assert perfect["mme_cognition"] == pytest.approx(200)

    always_yes = task.aggregate([task.process(d, "Yes") for d in docs])
    assert always_yes["mme_existence_acc"] == pytest.approx(0.5)
    assert always_yes["mme_existence_acc_plus"] == 0.0
    assert always_yes["mme_perception"] == pytest.approx(50)
    assert always_yes["mme_cognition"] == pytest.approx(50)
