"""VQAv2 (Goyal et al. 2017): open-ended questions on COCO images, ten human answers per question.

Scoring is the official `vqaEval.py` (GT-Vision-Lab/VQA, master after the 2021 "processing answers"
fix): newlines and tabs become spaces and both ends are stripped; only when the ten human answers are
not all the same are the answers and the prediction normalised (punctuation, number words to digits,
articles dropped, contractions restored); a question's accuracy is the mean over the ten
leave-one-human-out subsets of min(#humans in the subset who gave the prediction / 3, 1).
`vqa_accuracy` is that function, quirks included (the period regex's broken look-behind, and the
`re.UNICODE` flag the official code passes where `re.sub` expects a count, so at most 32 periods go).

What is scored is the answer a submission would carry: the model output after the EvalAI answer
processing that LLaVA's `convert_vqav2_for_submission.py` and lmms-eval apply before the official rule
(lower case, ',' and '?' dropped, "'s" split off as " 's", then the same punctuation / digit / article
steps). The test-dev export is the file LLaVA uploads. lmms-eval's `vqav2_val` differs where all ten
humans agree on an answer that normalisation would change (it normalises them anyway: "two" vs "2"),
see tests/test_lmms_eval_parity.py. Fed raw, the official rule would give "Yes" 0 on a question all ten humans answered
"yes"; the price of the EvalAI step is that "man's" becomes "man 's" and misses a human "man's".

Test splits (`testdev`, `test`) have no answers: nothing is scored, `export` writes the EvalAI result
file, `[{"question_id": int, "answer": str}]` (the official results format), with one answer for every
question of the full test set (test2015) even for test-dev, as the server requires: the questions of
the split answered, the others "" (as LLaVA pads). The full question set comes from the official
`v2_OpenEnded_mscoco_test2015_questions.json` (`test_questions=`); a test-split run without it stops
before generating anything.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from omnibench import data
from omnibench.args import Arg
from omnibench.cache import atomic_write_text
from omnibench.protocol import Doc, OmnibenchError
from omnibench.tasks.common import SingleImageQA, answers_every_question

SCORED_SPLITS = ("validation",)
TEST_SPLITS = ("testdev", "test")
LAYOUTS = (data.Layout("lmms-lab/VQAv2 (default config)", "default", SCORED_SPLITS + TEST_SPLITS),)
# The repository also holds the train split (most of its 45 GB), which no evaluation reads.
_FILES = ("README.md", "data/validation-*", "data/testdev-*", "data/test-*")
SOURCES = (
    data.HubSource("lmms-lab/VQAv2", "32665d35052eb4a6d4414851c3c829a72754915a",
                   "default config (validation, testdev, test; and train)", _FILES),
    data.HubSource("lmms-lab-encoder/VQAv2", "main", "a mirror of lmms-lab/VQAv2 (what lmms-eval 0.7.3 reads)",
                   _FILES),
)
COLUMNS = ("question_id", "question", "image")
# The evaluation server's name of each test split (its phases and the official file names use these).
SERVER_SUBSET = {"testdev": "test-dev2015", "test": "test2015"}

# The official tables. Keys with capitals ("Im", "Ive", ...) can never match lower-cased text and
# "somebody'd" maps the wrong way round; both are kept because the official scorer has them.
_CONTRACTION_PAIRS = """
aint ain't | arent aren't | cant can't | couldve could've | couldnt couldn't | couldn'tve couldn't've
couldnt've couldn't've | didnt didn't | doesnt doesn't | dont don't | hadnt hadn't | hadnt've hadn't've
hadn'tve hadn't've | hasnt hasn't | havent haven't | hed he'd | hed've he'd've | he'dve he'd've | hes he's
howd how'd | howll how'll | hows how's | Id've I'd've | I'dve I'd've | Im I'm | Ive I've | isnt isn't
itd it'd | itd've it'd've | it'dve it'd've | itll it'll | let's let's | maam ma'am | mightnt mightn't
mightnt've mightn't've | mightn'tve mightn't've | mightve might've | mustnt mustn't | mustve must've
neednt needn't | notve not've | oclock o'clock | oughtnt oughtn't | ow's'at 'ow's'at | 'ows'at 'ow's'at
'ow'sat 'ow's'at | shant shan't | shed've she'd've | she'dve she'd've | she's she's | shouldve should've
shouldnt shouldn't | shouldnt've shouldn't've | shouldn'tve shouldn't've | somebody'd somebodyd
somebodyd've somebody'd've | somebody'dve somebody'd've | somebodyll somebody'll | somebodys somebody's
someoned someone'd | someoned've someone'd've | someone'dve someone'd've | someonell someone'll
someones someone's | somethingd something'd | somethingd've something'd've | something'dve something'd've
somethingll something'll | thats that's | thered there'd | thered've there'd've | there'dve there'd've
therere there're | theres there's | theyd they'd | theyd've they'd've | they'dve they'd've | theyll they'll
theyre they're | theyve they've | twas 'twas | wasnt wasn't | wed've we'd've | we'dve we'd've | weve we've
werent weren't | whatll what'll | whatre what're | whats what's | whatve what've | whens when's
whered where'd | wheres where's | whereve where've | whod who'd | whod've who'd've | who'dve who'd've
wholl who'll | whos who's | whove who've | whyll why'll | whyre why're | whys why's | wont won't
wouldve would've | wouldnt wouldn't | wouldnt've wouldn't've | wouldn'tve wouldn't've | yall y'all
yall'll y'all'll | y'allll y'all'll | yall'd've y'all'd've | y'alld've y'all'd've | y'all'dve y'all'd've
youd you'd | youd've you'd've | you'dve you'd've | youll you'll | youre you're | youve you've
"""
CONTRACTIONS: dict[str, str] = dict(pair.split() for pair in _CONTRACTION_PAIRS.replace("\n", "|").split("|")
                                    if pair.strip())
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
               ",", "?", "!")
# "(?!<=\d)" is a look-ahead, not the look-behind it was meant to be: any '.' not followed by a digit goes.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
OFFICIAL_PERIOD_COUNT = int(re.UNICODE)  # passed as `count` by the official code: 32


def process_punctuation(text: str) -> str:
    """Official processPunctuation: a mark next to a space (or any mark at all, once the text has a
    digit,digit comma) is deleted, otherwise replaced by a space; then periods go."""
    drop_all = COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if drop_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Official processDigitArticle: lower case, number words to digits, articles dropped, contractions
    restored, words re-joined by single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text: str) -> str:
    return process_digit_article(process_punctuation(text))


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Official per-question VQA accuracy in [0, 1].

    The official loop drops the current answer dict by inequality; hub answers carry distinct
    answer_ids 1..10, so that is dropping exactly one answer by position, as here."""
    if not human_answers:
        raise ValueError("VQA accuracy needs the human answers (test splits have none)")
    gts = [_clean_whitespace(a) for a in human_answers]
    pred = _clean_whitespace(prediction)
    if len(set(gts)) > 1:
        gts = [normalize_answer(a) for a in gts]
        pred = normalize_answer(pred)
    matches = [a == pred for a in gts]
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3) for m in matches) / len(gts)


def submission_answer(text: str) -> str:
    """The EvalAI answer processing (MMF's EvalAIAnswerProcessor, used by LLaVA and lmms-eval) that turns
    a model output into the answer submitted and scored."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_answer(_clean_whitespace(text))


def vqav2_scores(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Overall and per answer type (yes/no, number, other) accuracy, as fractions."""
    if not records:
        return {}
    out = {"vqav2_accuracy": sum(r["accuracy"] for r in records) / len(records)}
    by_type: dict[str, list[float]] = defaultdict(list)
    for r in records:
        by_type[r["answer_type"]].append(r["accuracy"])
    for answer_type, accs in sorted(by_type.items()):
        key = re.sub(r"[^a-z0-9]+", "_", str(answer_type).lower()).strip("_")
        out[f"vqav2_{key}_accuracy"] = sum(accs) / len(accs)
    return out


def submission(records: Sequence[dict[str, Any]], all_question_ids: Sequence[int] = ()) -> list[dict[str, Any]]:
    """EvalAI result list; questions of `all_question_ids` without a record get "" (as LLaVA does: the
    server rejects a file that does not cover its whole question set)."""
    answers = {int(r["question_id"]): r["answer"] for r in records}
    for qid in all_question_ids:
        answers.setdefault(int(qid), "")
    return [{"question_id": qid, "answer": ans} for qid, ans in answers.items()]


def sample_rows(with_answers: bool = True) -> list[dict[str, Any]]:
    """A few rows in the lmms-lab/VQAv2 schema with drawn images (built-in offline sample)."""
    shapes = ["circle", "square", "circle", "square"]
    specs = [  # question, question_type, answer_type, the ten human answers
        ("Is there a circle in the image?", "is there a", "yes/no", ["yes"] * 10),
        ("How many squares are there?", "how many", "number", ["1"] * 7 + ["one"] * 2 + ["2"]),
        ("What shape is in the middle?", "what", "other", ["circle"] * 6 + ["a circle", "round", "dot", "ball"]),
        ("What color is the background?", "what color is the", "other",
         ["green", "green", "dark green", "olive", "brown", "green.", "gray", "khaki", "olive", "green"]),
    ]
    rows = []
    for i, (shape, (question, qtype, atype, answers)) in enumerate(zip(shapes, specs)):
        rows.append({
            "question_type": qtype if with_answers else None,
            "multiple_choice_answer": max(set(answers), key=answers.count) if with_answers else None,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                        for j, a in enumerate(answers)] if with_answers else None,
            "image_id": 900 + i,
            "answer_type": atype if with_answers else None,
            "question_id": (900 + i) * 1000 + i,
            "question": question,
            "image": {"bytes": data.png_bytes(data.drawn_image(100 + i, shape=shape)), "path": None},
        })
    return rows


def sample_features() -> dict[str, Any]:
    import datasets
    answer = {"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string"),
              "answer_id": datasets.Value("int64")}
    return {"question_type": "string", "multiple_choice_answer": "string", "answers": [answer],
            "image_id": "int64", "answer_type": "string", "question_id": "int64", "question": "string",
            "image": "image"}


def write_sample() -> str:
    """The built-in sample as lmms-lab/VQAv2 holds it: validation with answers, the test splits without."""
    rows = {split: sample_rows(with_answers=split in SCORED_SPLITS) for split in SCORED_SPLITS + TEST_SPLITS}
    return data.write_hub_layout("vqav2", {"default": rows}, data.features_from(sample_features()))


class VQAv2(SingleImageQA):
    name = "vqav2"
    # The paper prints test-dev (scored only by the evaluation server); a val score is its own column.
    paper_column = "VQAv2(val)"
    paper_metric = "vqav2_accuracy"
    tolerances = {"vqav2_*": 0.005}
    SOURCES = SOURCES
    ARGS = (*data.source_args("validation", SCORED_SPLITS + TEST_SPLITS),
            Arg("test_questions", str, None, "the official full test question file "
                "(v2_OpenEnded_mscoco_test2015_questions.json), needed by split=testdev and split=test: the "
                "evaluation server takes only a file that answers every one of its questions"))
    id_columns = ("question_id",)

    def __init__(self, **task_args: Any) -> None:
        super().__init__(**task_args)
        self.split = self.args["split"]
        self.test_questions = self.args["test_questions"]
        source = data.task_source(self.args, SOURCES, write_sample)
        self.read = source.read(LAYOUTS, self.split, self.args["config"],
                                COLUMNS + (("answers", "answer_type") if self.scored else ()))
        self.ds = self.read.ds
        # Read now, so that a missing or wrong file stops the run before any generation.
        self.all_question_ids = [] if self.scored else self._test_question_ids()

    def _test_question_ids(self) -> list[int]:
        """Every question id of the official full test question file, which must hold this split's."""
        path, flag = self.test_questions, "--task_args vqav2.test_questions"
        if not path:
            raise OmnibenchError(f"vqav2.split={self.split} writes the evaluation server's file, which must answer "
                                 f"every question of the full test set: pass {flag}=<path of "
                                 f"v2_OpenEnded_mscoco_test2015_questions.json> (visualqa.org/download.html)")
        try:
            ids = [int(q["question_id"]) for q in json.loads(Path(path).read_text())["questions"]]
        except OSError as exc:
            raise OmnibenchError(f"cannot read {flag}={path}: {exc.strerror or exc} (give the official "
                                 f"v2_OpenEnded_mscoco_test2015_questions.json)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise OmnibenchError(f"{flag}={path} is not an official VQA question file ({{\"questions\": "
                                 f"[{{\"question_id\": ...}}, ...]}}): {type(exc).__name__}: {exc}") from None
        missing = {int(q) for q in self.ds["question_id"]} - set(ids)
        if missing:
            raise OmnibenchError(f"{len(missing)} {self.split} questions (e.g. {min(missing)}) are not in {flag}="
                                 f"{path}: give the full test2015 question file (test-dev is a part of it)")
        return ids

    @property
    def scored(self) -> bool:
        return self.split in SCORED_SPLITS

    def doc_id(self, row: dict[str, Any]) -> str:
        return str(row["question_id"])

    def process(self, doc: Doc, output: Any) -> dict[str, Any]:
        row = doc.row
        answer = "" if output is None else submission_answer(output)
        record = {"question_id": int(row["question_id"]), "answer_type": row.get("answer_type"),
                  "answer": answer, "pred_raw": output}
        if self.scored:
            humans = [a["answer"] for a in row["answers"]]
            record["accuracy"] = 0.0 if output is None else vqa_accuracy(answer, humans)
        return record

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        return vqav2_scores(records) if self.scored else {}

    @classmethod
    def paired_parts(cls, samples: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, list[float]] | None:
        """Per question: (VQA accuracy, 1); none on test splits (no answers)."""
        if not samples or any("accuracy" not in r for _, r in samples):
            return None
        return {sample_id: [float(r["accuracy"]), 1.0] for sample_id, r in samples}

    def export(self, records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
        if self.scored or not answers_every_question(self, records, len(self.ds), "submission file"):
            return []
        path = Path(out_dir) / f"v2_OpenEnded_mscoco_{SERVER_SUBSET[self.split]}_omnibench_results.json"
        atomic_write_text(path, json.dumps(submission(records, self.all_question_ids)))
        return [path]
