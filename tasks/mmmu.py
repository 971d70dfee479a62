"""MMMU (Yue et al. 2024): college-level multi-discipline questions over 1 to 7 images, 30 subjects.

Answer extraction and scoring follow the official `mmmu/utils/eval_utils.py` and `data_utils.py`
(MMMU-Benchmark/MMMU):
- multiple choice: strip edge punctuation, then look for "(B)", else " B " (a bare letter between
  spaces, which "B." and "The answer is C." become once the end punctuation is gone), else, only
  for a reply of more than 5 words, the text of an option; several hits go to the one that occurs
  last in the reply; no hit gets a random letter. The official script draws that letter from the
  global `random` seeded with 42, so it depends on the order samples are scored in; here it is
  drawn from a generator seeded by the sha256 of the sample id, so a sample always gets the same
  guess, in any order, shard or resumed run.
- open: the shortest tail after a key phrase ("is ", "so ", "answer ", ..., and "=" on the last
  line) of every line, plus every number in it ("1,000", "1.5e-3", "-2", "25" of "25%"), each
  normalised (numbers to floats rounded to 2 decimals, text lower-cased); right if a number equals
  a normalised gold number or a normalised gold string is a substring of a text candidate.
- accuracy per subject, per discipline (the official DOMAIN_CAT2SUB_CAT grouping, weighted by
  questions) and overall, as fractions. A failed sample counts as wrong.

lmms-eval (tasks/mmmu/utils.py) differs in its parser: it also takes "B " and "B." without a space
in front, so "B. Paris" parses there and is a random guess here; and it scores the `answer` cell as
is, so the three open questions whose gold is a list written as a string (e.g.
"['24/7', '3.429']") can never be right there; here the list is read, as the official answer file
has it. The prompt is lmms-eval's: the question with its "<image i>" tokens, options as "A. ...",
and its post prompt. Images are the non-empty image_1..image_7 columns in order (lmms-eval takes
the ones named by "<image i>" tokens; in MMMU those are the same images).

Test split: answers are hidden; `export` writes the submission file the official server reads (the
"evaluation only" format of the official `main_eval_only.py`), {id: letter} for multiple choice and
{id: raw reply} for open questions (as `run_llava.py` does), every question of the subjects run.
"""
from __future__ import annotations

import ast
import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any, Sequence

from omnibench import data
from omnibench.args import Arg
from omnibench.cache import atomic_write_text
from omnibench.protocol import Doc, Docs, OmnibenchError, Request, Task
from omnibench.tasks.common import answers_every_question, photo_sized

IMAGE_COLUMNS = tuple(f"image_{i}" for i in range(1, 8))
MULTIPLE_CHOICE = "multiple-choice"
MC_POST_PROMPT = "Answer with the option's letter from the given choices directly."
OPEN_POST_PROMPT = "Answer the question using a single word or phrase."
MAX_NEW_TOKENS = 128

# The official grouping (data_utils.py); subjects in the official order (CAT_SHORT2LONG).
CAT_SHORT2LONG = {
    "acc": "Accounting", "agri": "Agriculture", "arch": "Architecture_and_Engineering", "art": "Art",
    "art_theory": "Art_Theory", "bas_med": "Basic_Medical_Science", "bio": "Biology", "chem": "Chemistry",
    "cli_med": "Clinical_Medicine", "cs": "Computer_Science", "design": "Design",
    "diag_med": "Diagnostics_and_Laboratory_Medicine", "econ": "Economics", "elec": "Electronics",
    "ep": "Energy_and_Power", "fin": "Finance", "geo": "Geography", "his": "History", "liter": "Literature",
    "manage": "Manage", "mark": "Marketing", "mate": "Materials", "math": "Math",
    "mech": "Mechanical_Engineering", "music": "Music", "phar": "Pharmacy", "phys": "Physics",
    "psy": "Psychology", "pub_health": "Public_Health", "socio": "Sociology",
}
SUBJECTS = tuple(CAT_SHORT2LONG.values())
SPLITS = ("dev", "validation", "test")
# The authors' repository has one config per subject; lmms-lab's (what lmms-eval reads) one `default`
# config with every subject, told apart by the id ("validation_Art_Theory_12").
PER_SUBJECT = "MMMU/MMMU (one config per subject)"
ONE_CONFIG = data.Layout("lmms-lab/MMMU (default config)", "default", SPLITS)
SOURCES = (
    data.HubSource("MMMU/MMMU", "main", "one config per subject (30), each with dev, validation, test"),
    data.HubSource("lmms-lab/MMMU", "main", "default config (dev, validation, test), every subject"),
    data.HubSource("lmms-lab-encoder/MMMU", "main", "a mirror of lmms-lab/MMMU (what lmms-eval 0.7.3 reads)"),
)
COLUMNS = ("id", "question", "options", "answer", "question_type", *IMAGE_COLUMNS)
DOMAIN_CAT2SUB_CAT = {
    "Art and Design": ["Art", "Art_Theory", "Design", "Music"],
    "Business": ["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    "Science": ["Biology", "Chemistry", "Geography", "Math", "Physics"],
    "Health and Medicine": ["Basic_Medical_Science", "Clinical_Medicine",
                            "Diagnostics_and_Laboratory_Medicine", "Pharmacy", "Public_Health"],
    "Humanities and Social Science": ["History", "Literature", "Sociology", "Psychology"],
    "Tech and Engineering": ["Agriculture", "Architecture_and_Engineering", "Computer_Science",
                             "Electronics", "Energy_and_Power", "Materials", "Mechanical_Engineering"],
}


# ----------------------------------------------------------------------------- prompt

def choice_letters(options: Sequence[Any]) -> list[str]:
    return [chr(ord("A") + i) for i in range(len(options))]


def multi_choice_info(options: Sequence[Any]) -> tuple[dict[str, str], list[str]]:
    """(letter -> option text, letters), as the official `get_multi_choice_info`."""
    letters = choice_letters(options)
    return {letter: str(option) for letter, option in zip(letters, options)}, letters


def mmmu_prompt(row: dict[str, Any]) -> str:
    """lmms-eval's MMMU prompt; the "<image i>" tokens stay in the text."""
    question = row["question"]
    if row["question_type"] == MULTIPLE_CHOICE:
        options = ast.literal_eval(row["options"])  # the hub stores the list as its Python literal
        listed = "\n".join(f"{letter}. {option}" for letter, option in zip(choice_letters(options), options))
        return f"{question}\n{listed}\n\n{MC_POST_PROMPT}"
    return f"{question}\n\n{OPEN_POST_PROMPT}"


def _has_image(cell: Any) -> bool:
    return cell is not None and not (isinstance(cell, dict) and not cell.get("bytes") and not cell.get("path"))


def subject_of(sample_id: str) -> str:
    """"validation_Art_Theory_12" -> "Art_Theory" (the official grouping by id)."""
    return "_".join(sample_id.split("_")[1:-1])


def gold_answer(answer: str) -> str | list[str]:
    """The `answer` cell; a few open questions keep several accepted answers as a list literal."""
    if answer.strip().startswith("["):
        try:
            parsed = ast.literal_eval(answer.strip())
        except (ValueError, SyntaxError):
            return answer
        if isinstance(parsed, list):
            return [str(a) for a in parsed]
    return answer


# ----------------------------------------------------------------------------- multiple choice

_EDGE_PUNCTUATION = (",", ".", "!", "?", ";", ":", "'")


def _fallback_choice(all_choices: Sequence[str], seed: str) -> str:
    rng = random.Random(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))
    return rng.choice(list(all_choices))


def parse_multi_choice_response(response: str, all_choices: Sequence[str], index2ans: dict[str, str],
                                seed: str = "") -> str:
    """The letter a reply picks, by the official rules; `seed` (the sample id) fixes the guess made
    when nothing matches."""
    for char in _EDGE_PUNCTUATION:  # one character at a time, in this order, as the official loop
        response = response.strip(char)
    padded = f" {response} "  # so a bare letter at either end is still between spaces

    candidates = [c for c in all_choices if f"({c})" in padded]
    if candidates:
        positions = [padded.rfind(f"({c})") for c in candidates]
    else:
        candidates = [c for c in all_choices if f" {c} " in padded]
        positions = [padded.rfind(f" {c} ") for c in candidates]
    if not candidates and len(padded.split()) > 5:
        lowered = padded.lower()
        candidates = [c for c, text in index2ans.items() if text.lower() in lowered]
        positions = [lowered.rfind(index2ans[c].lower()) for c in candidates]
    if not candidates:
        return _fallback_choice(all_choices, seed)
    # The last mention wins; equal positions keep the earlier letter (numpy argmax in the original).
    return candidates[positions.index(max(positions))]


def eval_multi_choice(gold: str | list[str], pred: str) -> bool:
    return pred in gold if isinstance(gold, list) else pred == gold


# ----------------------------------------------------------------------------- open questions

_KEY_PHRASES = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL_TAILS = {":", ",", ".", "!", "?", ";", "'"}
_NUMBER_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUMBER_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
# A plain number not followed by an exponent, a comma or another digit.
_NUMBER_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d)(?![,\d])")


def extract_numbers(text: str) -> list[str]:
    """Every number-like substring: with thousands commas, scientific, then plain (official order)."""
    return (_NUMBER_WITH_COMMAS.findall(text) + _NUMBER_SCIENTIFIC.findall(text)
            + _NUMBER_SIMPLE.findall(text))


def is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def normalize_str(text: str) -> list[str | float]:
    """A number becomes its float rounded to 2 decimals; text is lower-cased, and a single character
    becomes " x" and "x " so that it only matches as a word edge."""
    text = text.strip()
    if is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def key_subresponses(response: str) -> list[str]:
    """Per line, the shortest tail after a key phrase (or "=" on the last line); the whole reply
    when no line has one. The official splitter also splits at ". " before a capital, but it runs
    after lower-casing, so only newlines ever split."""
    text = response.strip().strip(".").lower()
    lines = text.split("\n")
    keys = []
    for i, line in enumerate(lines):
        phrases = _KEY_PHRASES + (("=",) if i == len(lines) - 1 else ())
        shortest = None
        for phrase in phrases:
            if phrase in line:
                tail = line.split(phrase)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest not in _TRIVIAL_TAILS:
            keys.append(shortest)
    return keys or [text]


def parse_open_response(response: str) -> list[str | float]:
    """Normalised answer candidates of a reply: key tails and the numbers in them, without repeats
    (first-seen order, where the official `set` leaves the order arbitrary; scoring ignores it)."""
    keys = key_subresponses(response)
    candidates = keys + [n for key in keys for n in extract_numbers(key)]
    return list(dict.fromkeys(v for c in candidates for v in normalize_str(c)))


def eval_open(gold: str | list[str], preds: Sequence[str | float]) -> bool:
    golds = [v for g in (gold if isinstance(gold, list) else [gold]) for v in normalize_str(g)]
    for pred in preds:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in golds):
                return True
        elif pred in golds:
            return True
    return False


# ----------------------------------------------------------------------------- aggregation

def _slug(name: str) -> str:
    return name.lower().replace(" ", "_")


def mmmu_scores(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Accuracy per subject, per discipline and overall, each the fraction of its questions right,
    from records with `subject` and `correct` (records without `correct`, i.e. unanswered test
    questions, are left out)."""
    per_subject: dict[str, list[bool]] = {}
    for r in records:
        if r.get("correct") is not None and r["subject"] in SUBJECTS:
            per_subject.setdefault(r["subject"], []).append(bool(r["correct"]))
    out: dict[str, float] = {}
    for discipline, subjects in DOMAIN_CAT2SUB_CAT.items():
        present = [s for s in subjects if s in per_subject]
        if not present:
            continue
        hits = [c for s in present for c in per_subject[s]]
        out[f"mmmu_{_slug(discipline)}_accuracy"] = sum(hits) / len(hits)
        for s in present:
            out[f"mmmu_{_slug(s)}_accuracy"] = sum(per_subject[s]) / len(per_subject[s])
    every = [c for hits in per_subject.values() for c in hits]
    if every:
        out["mmmu_accuracy"] = sum(every) / len(every)
    return out


def parse_subjects(spec: str | None) -> list[str]:
    """'+'-separated subject names (hub config names, any case, or the official short names),
    in the official order; all 30 when empty."""
    if not spec:
        return list(SUBJECTS)
    by_key = {s.lower(): s for s in SUBJECTS} | CAT_SHORT2LONG
    chosen = set()
    for name in spec.split("+"):
        key = name.strip().lower()
        if key not in by_key:
            raise OmnibenchError(f"unknown MMMU subject '{name}' (known: {', '.join(SUBJECTS)})")
        chosen.add(by_key[key])
    return [s for s in SUBJECTS if s in chosen]


# ----------------------------------------------------------------------------- built-in sample

SAMPLE_SUBJECTS = ("Accounting", "Math")


def _features():
    import datasets

    text = datasets.Value("string")
    return datasets.Features({
        "id": text, "question": text, "options": text, "explanation": text,
        **{col: datasets.Image() for col in IMAGE_COLUMNS},
        "img_type": text, "answer": text, "topic_difficulty": text, "question_type": text, "subfield": text})


def sample_rows(subject: str, split: str = "validation") -> list[dict[str, Any]]:
    """A few rows of one subject in the MMMU/MMMU schema with drawn images: multiple choice and
    open, one with two images (built-in offline sample)."""
    def image(seed: int, shape: str) -> dict[str, Any]:
        return {"bytes": data.png_bytes(data.drawn_image(seed, shape=shape)), "path": None}

    base = {"explanation": "", "img_type": "['Diagrams']", "topic_difficulty": "Easy",
            **{col: None for col in IMAGE_COLUMNS}}
    offset = SUBJECTS.index(subject) * 10
    specs = [
        ("What shape is drawn in <image 1>?", "['circle', 'square', 'triangle']", "A",
         MULTIPLE_CHOICE, ["circle"]),
        ("Which image shows a square: <image 1> or <image 2>?", "['<image 1>', '<image 2>']", "B",
         MULTIPLE_CHOICE, ["circle", "square"]),
        ("How many shapes are drawn in <image 1>?", "[]", "1", "open", ["square"]),
    ]
    rows = []
    for n, (question, options, answer, qtype, shapes) in enumerate(specs, start=1):
        rows.append({**base, "id": f"{split}_{subject}_{n}", "question": question, "options": options,
                     "answer": answer if split != "test" else "?", "question_type": qtype,
                     "subfield": subject.replace("_", " "),
                     **{f"image_{i}": image(offset + n * 7 + i, shape) for i, shape in enumerate(shapes, start=1)}})
    return rows


def write_sample() -> str:
    """The built-in sample as MMMU/MMMU holds it: one config per subject, each with its three splits."""
    return data.write_hub_layout("mmmu", {subject: {split: sample_rows(subject, split) for split in SPLITS}
                                          for subject in SAMPLE_SUBJECTS}, _features())


# ----------------------------------------------------------------------------- reading

def read_subjects(source: data.Source, subjects: Sequence[str], split: str, config: str | None) -> data.Read:
    """The subjects' questions of `split` in the official order (by subject, then by the number in the
    id), from either layout: one config per subject when the source holds every one asked for (and no
    other config is named), else the one config with every subject, its rows chosen by the subject in
    their id ("validation_Art_Theory_12"). Both layouts give the same rows in the same order."""
    held = source.config_names()
    if config in (None, *subjects) and all(s in held for s in subjects):
        per_subject = [data.Layout(PER_SUBJECT, s, SPLITS) for s in subjects]
        read = data.concat([source.read(per_subject, split, s, COLUMNS, IMAGE_COLUMNS) for s in subjects])
    elif config is None and not {"default", data.ANY} & set(held):
        absent = [s for s in subjects if s not in held]
        raise OmnibenchError(f"{source.where} holds neither a config for each subject asked for ({PER_SUBJECT}: "
                             f"no {', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}) nor one config with "
                             f"every subject ({ONE_CONFIG.name}); it holds {source.holdings()}: pass subjects= "
                             f"naming the ones it holds")
    else:
        read = source.read((ONE_CONFIG,), split, config, COLUMNS, IMAGE_COLUMNS)
    order = {s: i for i, s in enumerate(subjects)}

    def key(n_id: tuple[int, str]) -> tuple[int, int, str]:
        number = n_id[1].rsplit("_", 1)[-1]
        return order[subject_of(n_id[1])], int(number) if number.isdigit() else 0, n_id[1]
    found = sorted(((n, i) for n, i in enumerate(read.ds["id"]) if subject_of(i) in order), key=key)
    missing = [s for s in subjects if s not in {subject_of(i) for _, i in found}]
    if missing:
        raise OmnibenchError(f"{source.where} ({read.layout}) has no {split} questions of {', '.join(missing[:5])}"
                             f"{' ...' if len(missing) > 5 else ''} (pass subjects= naming the ones it holds)")
    rows = [n for n, _ in found]
    if rows != list(range(len(read.ds))):
        read.ds = read.ds.select(rows)
    return read


# ----------------------------------------------------------------------------- task

class MMMU(Task):
    name = "mmmu"
    paper_column = "MMMU"
    paper_metric = "mmmu_accuracy"
    tolerances = {"mmmu_*": 0.02}  # 900 validation questions: one is 0.11 points
    SOURCES = SOURCES
    ARGS = (*data.source_args("validation", SPLITS),
            Arg("subjects", str, None, "'+'-separated subjects (hub config or official short names); default all 30"))

    def __init__(self, **task_args: Any) -> None:
        super().__init__(**task_args)
        self.split = self.args["split"]
        sample, config = self.args["sample"], self.args["config"]
        default = "+".join(SAMPLE_SUBJECTS) if sample else config if config in SUBJECTS else None
        self.subjects = parse_subjects(self.args["subjects"] or default)
        if sample:
            missing = [s for s in self.subjects if s not in SAMPLE_SUBJECTS]
            if missing:
                raise OmnibenchError(f"the built-in MMMU sample has only {', '.join(SAMPLE_SUBJECTS)}, not {', '.join(missing)}")
        self.read = read_subjects(data.task_source(self.args, SOURCES, write_sample), self.subjects, self.split, config)
        self.ds = self.read.ds

    def docs(self) -> Docs:
        return data.lazy_docs(self.ds, ("id",), lambda row: row["id"])

    def fingerprint(self) -> dict[str, Any]:
        chosen = None if self.subjects == list(SUBJECTS) else "+".join(self.subjects)
        return {**self.read.fingerprint(), "subjects": chosen}

    @classmethod
    def throughput_requests(cls, n: int) -> list[Request]:
        """One 800x600 figure, a multiple-choice question of MMMU's typical length (about 60 words, four
        options) in lmms-eval's prompt, and the 3 tokens a letter answer takes."""
        images = photo_sized(min(n, 16), (800, 600))
        stem = ("<image 1> The figure shows the results of an experiment described in the text above. Based on "
                "the measurements plotted, which of the following statements best explains the trend observed "
                "between the two conditions, assuming all other variables were held constant during the study?")
        options = repr(["The first condition increases the rate", "The second condition has no effect",
                        "Both conditions reduce the rate equally", "The effect depends on the temperature"])
        return [Request(f"mmmu_{i}", mmmu_prompt({"question": f"Question {i}: {stem}", "options": options,
                                                  "question_type": MULTIPLE_CHOICE}),
                        [images[i % len(images)]], {"max_new_tokens": 3}) for i in range(n)]

    def build_request(self, doc: Doc) -> Request:
        row = doc.row
        images = [data.decode_image(row[col]) for col in IMAGE_COLUMNS if _has_image(row.get(col))]
        return Request(doc.doc_id, mmmu_prompt(row), images, {"max_new_tokens": MAX_NEW_TOKENS})

    def process(self, doc: Doc, output: Any) -> dict[str, Any]:
        row = doc.row
        multiple_choice = row["question_type"] == MULTIPLE_CHOICE
        if output is None:
            parsed = None
        elif multiple_choice:
            index2ans, letters = multi_choice_info(ast.literal_eval(row["options"]))
            parsed = parse_multi_choice_response(output, letters, index2ans, seed=doc.doc_id)
        else:
            parsed = parse_open_response(output)
        record = {"id": doc.doc_id, "subject": subject_of(doc.doc_id), "question_type": row["question_type"],
                  "pred_raw": output, "parsed_pred": parsed}
        if self.split != "test":  # test answers are hidden ("?")
            gold = gold_answer(row["answer"])
            record["answer"] = gold
            record["correct"] = parsed is not None and (
                eval_multi_choice(gold, parsed) if multiple_choice else eval_open(gold, parsed))
        return record

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        return mmmu_scores(records)

    @classmethod
    def paired_parts(cls, samples: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, list[float]] | None:
        """Per question: (right, 1); none on the test split (answers hidden)."""
        scored = [(i, r) for i, r in samples if r.get("correct") is not None and r["subject"] in SUBJECTS]
        if not scored:
            return None
        return {sample_id: [float(r["correct"]), 1.0] for sample_id, r in scored}

    def export(self, records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
        if self.split != "test" or not answers_every_question(self, records, len(self.ds), "submission file"):
            return []
        path = Path(out_dir) / "mmmu_test_for_submission.json"
        atomic_write_text(path, json.dumps(submission(records), indent=1))
        return [path]


def submission(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    """{id: prediction}: the parsed letter for multiple choice, the raw reply for open questions
    (the server parses those itself); "" for a failed sample."""
    out = {}
    for r in records:
        if r["question_type"] == MULTIPLE_CHOICE:
            out[r["id"]] = r["parsed_pred"] or ""
        else:
            out[r["id"]] = r["pred_raw"] or ""
    return out
