"""POPE scorer against the official evaluate.py rules, worked by hand."""
import pytest

from omnibench.tasks.pope import Pope, binary_metrics, extract_yes_no, pope_scores


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"),
    ("Yes, there is.", "yes"),
    ("No, there is no dog.", "no"),
    ("no", "no"),
    ("There is not a dog.", "no"),
    ("Not at all", "yes"),          # official: "Not" (capital) is not in {No, no, not}
    ("NO", "yes"),                  # official: case-sensitive word match
    ("Yes. No dog though.", "yes"),  # only the first sentence counts
    ("No.", "no"),
    ("no,", "no"),                  # commas are dropped before splitting
    ("I think so", "yes"),          # anything without a negation is a yes
    ("", "yes"),
])
def test_official_yes_no_extraction(text, expected):
    assert extract_yes_no(text) == expected


def test_binary_metrics_by_hand():
    preds = ["yes", "yes", "no", "no", "yes"]
    labels = ["yes", "no", "no", "yes", "yes"]
    # TP=2 FP=1 TN=1 FN=1: acc 3/5, precision 2/3, recall 2/3, F1 2/3, yes ratio 3/5
    m = binary_metrics(preds, labels)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(0.6)


def test_failed_sample_is_a_miss_not_a_negative():
    m = binary_metrics(["none", "yes"], ["yes", "yes"])
    assert m["recall"] == 0.5 and m["accuracy"] == 0.5 and m["precision"] == 1.0


def test_all_no_answers_give_zero_f1_without_dividing_by_zero():
    m = binary_metrics(["no", "no"], ["yes", "no"])
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["accuracy"] == 0.5


def test_mean_is_over_the_three_splits():
    records = [
        {"category": "random", "pred": "yes", "answer": "yes"},
        {"category": "random", "pred": "no", "answer": "no"},       # random: F1 1.0
        {"category": "popular", "pred": "yes", "answer": "no"},
        {"category": "popular", "pred": "yes", "answer": "yes"},    # popular: P 0.5 R 1 -> F1 2/3
        {"category": "adversarial", "pred": "no", "answer": "yes"},
        {"category": "adversarial", "pred": "no", "answer": "no"},  # adversarial: F1 0
    ]
    s = pope_scores(records)
    assert s["pope_random_f1"] == 1.0
    assert s["pope_popular_f1"] == pytest.approx(2 / 3)
    assert s["pope_adversarial_f1"] == 0.0
    assert s["pope_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert s["pope_accuracy"] == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_sample_loads_through_datasets_and_scores_perfect_answers():
    task = Pope(sample="true")
    docs = task.docs()
    assert len(docs) == 6 and len({d.doc_id for d in docs}) == 6
    req = task.build_request(docs[0])
    assert req.images[0].mode == "RGB"
    assert req.prompt.endswith("\nAnswer the question using a single word or phrase.")
    records = [task.process(d, "Yes, there is." if d.row["answer"] == "yes" else "No, there is not.") for d in docs]
    assert task.aggregate(records)["pope_f1"] == 1.0
    assert task.fingerprint()["num_rows"] == 6
