import json

import datasets
import pytest

from omnibench.protocol import OmnibenchError
from omnibench.tasks.mmmu import (IMAGE_COLUMNS, MC_POST_PROMPT, OPEN_POST_PROMPT, SAMPLE_SUBJECTS, MMMU, _features,
                        eval_multi_choice, eval_open, extract_numbers, gold_answer, mmmu_prompt, mmmu_scores,
                        multi_choice_info, normalize_str, parse_multi_choice_response, parse_open_response,
                        parse_subjects, sample_rows, subject_of)

ANIMALS = ["cat", "dog", "red fox", "owl"]


def pick(reply, options=ANIMALS, seed="validation_Art_1"):
    index2ans, letters = multi_choice_info(options)
    return parse_multi_choice_response(reply, letters, index2ans, seed=seed)


@pytest.mark.parametrize("reply,letter", [
    ("(B)", "B"), ("(B) dog", "B"), ("The answer is (C).", "C"),
    ("B", "B"), ("B.", "B"), ("The answer is C.", "C"), ("D,", "D"), ("'A'", "A"),
    # several brackets or letters: the one mentioned last wins (official tie-break)
    ("(A) is wrong, so (B)", "B"), ("(B) and not (A)", "A"),
    ("A is wrong, the answer is B", "B"),
    # a bracket beats a bare letter wherever it stands
    ("D looks tempting but (A)", "A"),
    # no letter: the option text, only for replies of more than 5 words, last mention wins
    ("I believe the animal shown is a dog", "B"),
    ("It is not a cat, it is a red fox for sure", "C"),
])
def test_multiple_choice_parsing_follows_official_rules(reply, letter):
    assert pick(reply) == letter


@pytest.mark.parametrize("reply", [
    "dog",                  # option text in 5 words or fewer is not read
    "B. Paris",             # official needs a space after the letter (lmms-eval would say B)
    "**C**", "",
])
def test_unparsable_multiple_choice_is_a_seeded_guess(reply):
    guesses = {pick(reply, seed="validation_Art_7") for _ in range(5)}
    assert len(guesses) == 1 and guesses <= {"A", "B", "C", "D"}
    # the guess depends on the sample id only, not on the order samples are scored in
    by_id = {pick(reply, seed=f"validation_Art_{i}") for i in range(40)}
    assert len(by_id) > 1



def test_option_text_is_read_only_past_five_words():
    seeds = [f"validation_Art_{i}" for i in range(10)]
    guesses = [pick("", seed=s) for s in seeds]
    assert set(guesses) != {"B"}
    assert [pick("The right one: a dog", seed=s) for s in seeds] == guesses   # 5 words: a guess
    assert {pick("The right one is a dog", seed=s) for s in seeds} == {"B"}    # 6 words: dog

def test_eval_multi_choice_exact_letter_or_any_of_list():
    assert eval_multi_choice("B", "B") and not eval_multi_choice("B", "b")
    assert eval_multi_choice(["A", "C"], "C") and not eval_multi_choice(["A", "C"], "B")


@pytest.mark.parametrize("text,numbers", [
    ("total 1,000 dollars", ["1,000", "000"]),        # commas pattern, and the plain pass sees "000"
    ("k = 1.5e-3 m", ["1.5e-3", "1", "-3"]),          # scientific, plus the official plain-pass leftovers
    ("rate 25% and -2.5", ["25", "-2.5"]),
    ("x is .5", [".5"]),
])
def test_number_extraction_matches_official_patterns(text, numbers):
    assert extract_numbers(text) == numbers


@pytest.mark.parametrize("text,normalized", [
    ("3.50", [3.5]), (" 1,000 ", [1000.0]), ("3.14159", [3.14]), ("1.5e-3", [0.0]),
    ("Hormone", ["hormone"]), ("A", [" a", "a "]),
])
def test_normalize_str_rounds_numbers_and_lowercases_text(text, normalized):
    assert normalize_str(text) == normalized


def test_open_parse_takes_shortest_tail_after_key_phrase_on_each_line():
    assert parse_open_response("The answer is 3.50") == [3.5]
    assert parse_open_response("Let x = 2\nSo the result is 7.") == [7.0]
    # "=" counts as a key phrase on the last line only
    assert parse_open_response("x = 2\ny = 7") == [7.0]
    assert parse_open_response("v = 12 m/s") == ["12 m/s", 12.0]
    # no key phrase: the whole reply, lower-cased, and its numbers
    assert parse_open_response("Hormone") == ["hormone"]
    assert parse_open_response("12 volts") == ["12 volts", 12.0]


@pytest.mark.parametrize("reply,gold,right", [
    ("The answer is 3.50", "3.5", True),
    ("The answer is 3.5", "3.50", True),
    ("3.504", "3.5", True),                      # both rounded to 2 decimals
    ("The answer is 35", "3.5", False),
    ("The total cost is 1,000 dollars", "1000", True),
    ("The rate is 25%", "25%", True),            # as text
    ("The rate is 25%", "25", True),             # as the number 25
    ("It is hormone therapy", "Hormone", True),  # gold text inside a candidate
    ("Therapy", "Hormone", False),
    ("Let x = 2\nSo the result is 7.", "2", False),
    ("A", "A", True), ("Ab", "A", False),        # one letter matches only at a word edge
    ("The answer is 3.429", "['24/7', '3.429']", True),
    ("The answer is 24/7", "['24/7', '3.429']", True),
])
def test_open_answers_hand_worked(reply, gold, right):
    assert eval_open(gold_answer(gold), parse_open_response(reply)) is right


def test_gold_answer_reads_list_literals_only():
    assert gold_answer("['$MgS$', 'MgS']") == ["$MgS$", "MgS"]
    assert gold_answer("3.5") == "3.5"
    assert gold_answer("['24/7', '3.429', '3.43]") == "['24/7', '3.429', '3.43]"  # malformed: as is


def test_prompt_lists_options_with_letters_and_lmms_eval_post_prompts():
    mc = {"question": "Which <image 1> is it?", "options": "['cat', \"dog's\"]", "question_type": "multiple-choice"}
    assert mmmu_prompt(mc) == f"Which <image 1> is it?\nA. cat\nB. dog's\n\n{MC_POST_PROMPT}"
    assert MC_POST_PROMPT == "Answer with the option's letter from the given choices directly."
    op = {"question": "How many?", "options": "[]", "question_type": "open"}
    assert mmmu_prompt(op) == "How many?\n\nAnswer the question using a single word or phrase."
    assert OPEN_POST_PROMPT == "Answer the question using a single word or phrase."


def test_subject_of_id_and_subject_selection():
    assert subject_of("validation_Art_Theory_12") == "Art_Theory"
    assert subject_of("test_Diagnostics_and_Laboratory_Medicine_3") == "Diagnostics_and_Laboratory_Medicine"
    assert parse_subjects("Math+acc+art_theory") == ["Accounting", "Art_Theory", "Math"]
    assert len(parse_subjects(None)) == 30
    with pytest.raises(OmnibenchError, match="unknown MMMU subject 'Maths'"):
        parse_subjects("Maths")


def test_accuracy_per_subject_discipline_and_overall_by_hand():
    def rec(subject, correct):
        return {"subject": subject, "correct": correct}
    records = ([rec("Accounting", True)] * 2 + [rec("Accounting", False)]        # 2/3
               + [rec("Economics", True)]                                         # 1/1
               + [rec("Math", False)] * 2                                         # 0/2
               + [rec("Art", True), rec("Art", False), rec("Art", False), rec("Art", False)]  # 1/4
               + [{"subject": "Art", "correct": None}])                           # unanswered test row
    out = mmmu_scores(records)
    assert out["mmmu_accounting_accuracy"] == pytest.approx(2 / 3)
    assert out["mmmu_economics_accuracy"] == 1.0
    assert out["mmmu_math_accuracy"] == 0.0
    assert out["mmmu_art_accuracy"] == pytest.approx(0.25)
    # disciplines and overall weigh questions, not subjects
    assert out["mmmu_business_accuracy"] == pytest.approx(3 / 4)
    assert out["mmmu_science_accuracy"] == 0.0
    assert out["mmmu_art_and_design_accuracy"] == pytest.approx(0.25)
    assert out["mmmu_accuracy"] == pytest.approx(4 / 10)
    assert "mmmu_health_and_medicine_accuracy" not in out
    assert mmmu_scores([{"subject": "Math", "correct": None}]) == {}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_sample_end_to_end_loads_two_subjects_with_images_and_scores(cache):
    task = MMMU(sample="true")
    docs = task.docs()
    assert [d.doc_id for d in docs] == [f"validation_{s}_{n}" for s in SAMPLE_SUBJECTS for n in (1, 2, 3)]
    requests = [task.build_request(d) for d in docs]
    assert [len(r.images) for r in requests] == [1, 2, 1] * 2
    assert requests[1].images[1].size == (64, 64) and requests[1].images[1].mode == "RGB"
    assert requests[1].prompt.startswith("Which image shows a square: <image 1> or <image 2>?\nA. <image 1>\nB. <image 2>")
    assert requests[2].prompt.endswith(OPEN_POST_PROMPT)
    replies = {"validation_Accounting_1": "(A)", "validation_Accounting_2": "The answer is B.",
               "validation_Accounting_3": "There is 1 shape.", "validation_Math_1": "B",
               "validation_Math_2": None, "validation_Math_3": "2"}
    records = [task.process(d, replies[d.doc_id]) for d in docs]
    assert [r["correct"] for r in records] == [True, True, True, False, False, False]
    assert json.loads(json.dumps(records)) == records
    out = task.aggregate(records)
    assert out["mmmu_accounting_accuracy"] == 1.0 and out["mmmu_math_accuracy"] == 0.0
    assert out["mmmu_business_accuracy"] == 1.0 and out["mmmu_science_accuracy"] == 0.0
    assert out["mmmu_accuracy"] == 0.5
    assert task.fingerprint()["num_rows"] == 6
    assert task.export(records, cache / "out") == []


def test_sample_subset_and_failed_sample_counts_wrong(cache):
    task = MMMU(sample="true", subjects="math")
    docs = task.docs()
    assert {subject_of(d.doc_id) for d in docs} == {"Math"}
    record = task.process(docs[0], None)
    assert record["correct"] is False and record["parsed_pred"] is None
    with pytest.raises(OmnibenchError, match="only Accounting, Math"):
        MMMU(sample="true", subjects="Art")


def test_test_split_has_no_score_and_exports_submission(cache):
    task = MMMU(sample="true", split="test", subjects="Accounting")
    docs = task.docs()
    assert docs[0].doc_id == "test_Accounting_1"
    records = [task.process(d, r) for d, r in zip(docs, ["(B) circle", None, "The count is 3"])]
    assert all("correct" not in r for r in records)
    assert task.aggregate(records) == {}
    (path,) = task.export(records, cache / "out")
    assert json.loads(path.read_text()) == {"test_Accounting_1": "B", "test_Accounting_2": "",
                                            "test_Accounting_3": "The count is 3"}


def test_local_snapshot_with_one_config_per_subject_loads_in_official_order(tmp_path):
    # the hub layout: <Subject>/<split>-*.parquet and a README `configs:` block
    readme = ["---", "configs:"]
    for subject in SAMPLE_SUBJECTS:
        (tmp_path / subject).mkdir()
        for split in ("dev", "validation"):
            rows = sample_rows(subject, split)
            datasets.Dataset.from_list(rows, features=_features()).to_parquet(
                str(tmp_path / subject / f"{split}-00000-of-00001.parquet"))
        readme += [f"- config_name: {subject}", "  data_files:"]
        readme += [f"  - split: {split}\n    path: {subject}/{split}-*" for split in ("dev", "validation")]
    (tmp_path / "README.md").write_text("\n".join(readme + ["---", ""]))
    task = MMMU(data_dir=str(tmp_path), subjects="Math+Accounting", split="dev")
    assert [d.doc_id for d in task.docs()][::3] == ["dev_Accounting_1", "dev_Math_1"]
    assert all(isinstance(task.docs()[0].row[c], (dict, type(None))) for c in IMAGE_COLUMNS)
    assert task.fingerprint()["source"] == str(tmp_path)
    with pytest.raises(OmnibenchError, match=r"holds neither a config for each subject asked for \(MMMU/MMMU \(one "
                       r"config per subject\): no Art\)"):
        MMMU(data_dir=str(tmp_path), subjects="Art")

