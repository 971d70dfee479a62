"""MME (Fu et al. 2023): yes/no questions in 14 subtasks, two questions per image (one "Yes", one "No").

Scoring follows the official `eval_tool/calculation.py`:
- answer extraction: lower-case the response; exactly "yes"/"no" is taken as is, else look at its first
  4 characters: "yes" in them -> yes, else "no" in them -> no, else "other" (always wrong). So
  "Yes, it is." -> yes, "Not sure" -> no, "y" -> other, "There is" -> other.
- per subtask: acc = fraction of questions right; acc+ = fraction of images with both questions right;
  score = (acc + acc+) * 100, so at most 200.
- perception = sum of the 10 perception subtask scores (max 2000); cognition = sum of the 4 cognition
  subtask scores (max 800). The paper's MME-P column is the perception total.
The official script pairs consecutive lines of each subtask file; we group by image instead (the hub's
`question_id` is "<category>/<file>", shared by the two questions of an image), which is the same
grouping in any row order. An image missing one of its answers (a partial run) is never acc+-correct.

Differences from lmms-eval's `mme/utils.py`, which we do not follow: it strips the response, removes
every ".", and maps the one-letter answers "y"/"n" to yes/no; the official script has none of that
("y" is "other" there). We only strip surrounding whitespace, as LLaVA's answer files are written
(`outputs.strip()`), which the official script then reads.

Export: the official tool's input, `mme_eval_tool/<subtask>.txt` (its `calculation.py --results_dir`):
one line per question, `<image file>\t<question>\t<Yes|No>\t<reply>`, the two questions of an image on
consecutive lines (the tool pairs consecutive lines for acc+); the reply stripped, its tabs and line
breaks turned into spaces so that a line stays one question. Written when the run answered every
question (the tool asserts two answers per image).

Prompt: lmms-eval's default for MME (the same text LLaVA-1.5 evaluated with): the question with its
" Please answer yes or no." removed, then "\\nAnswer the question using a single word or phrase.".
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from omnibench import data
from omnibench.cache import atomic_write_text
from omnibench.protocol import Doc, Docs, Request, Task
from omnibench.tasks.common import COCO_OBJECTS, SHORT_ANSWER, answers_every_question, photo_sized

LAYOUTS = (data.Layout("lmms-lab/MME (default config)", "default", ("test",)),)
SOURCES = (
    data.HubSource("lmms-lab/MME", "d6c9023f017b564f7b3ccccf5348166bce8fdbcd", "default config (test)",
                   ("README.md", "data/test-*")),
    data.HubSource("lmms-lab-encoder/MME", "d6c9023f017b564f7b3ccccf5348166bce8fdbcd",
                   "a mirror of lmms-lab/MME (what lmms-eval 0.7.3 reads)", ("README.md", "data/test-*")),
)
COLUMNS = ("question_id", "question", "answer", "category", "image")
FEATURES = {"question_id": "string", "question": "string", "answer": "string", "category": "string",
            "image": "image"}
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
              "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
YES_NO_SUFFIX = " Please answer yes or no."
POST_PROMPT = SHORT_ANSWER
QUESTIONS_PER_IMAGE = 2


def extract_answer(text: str) -> str:
    """The official rule: "yes", "no", or "other" (unparseable, counted wrong)."""
    text = text.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_prompt(question: str) -> str:
    """lmms-eval's default MME prompt: the yes/no instruction swapped for the short-answer one."""
    return question.strip().replace(YES_NO_SUFFIX, "") + POST_PROMPT


def image_key(row: dict[str, Any]) -> str:
    """The image a question is about: "<category>/<file>" (the hub's question_id already has that form)."""
    qid, category = row["question_id"], row["category"]
    return qid if qid.startswith(f"{category}/") else f"{category}/{qid}"


def subtask_scores(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """acc, acc_plus (fractions) and score ((acc + acc_plus) * 100) per subtask, from records with
    `category`, `image`, `answer` ("yes"/"no") and `pred`."""
    by_image: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_image[r["category"]][r["image"]].append(r["pred"] == r["answer"])
    out = {}
    for category, images in by_image.items():
        correct = [c for marks in images.values() for c in marks]
        acc = sum(correct) / len(correct)
        acc_plus = sum(len(m) == QUESTIONS_PER_IMAGE and all(m) for m in images.values()) / len(images)
        out[category] = {"acc": acc, "acc_plus": acc_plus, "score": (acc + acc_plus) * 100}
    return out


def mme_scores(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per-subtask metrics plus the perception and cognition totals over the subtasks present."""
    per_task = subtask_scores(records)
    out = {f"mme_{cat}_{k}": v for cat, m in sorted(per_task.items()) for k, v in m.items()}
    for total, members in (("mme_perception", PERCEPTION), ("mme_cognition", COGNITION)):
        present = [per_task[c]["score"] for c in members if c in per_task]
        if present:
            out[total] = sum(present)
    return out


def eval_tool_files(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    """{subtask: text of its .txt file for the official calculation.py}, questions grouped by image in
    the order the images first appear."""
    by_image: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(dict)
    for r in records:
        by_image[r["category"]].setdefault(r["image"], []).append(r)
    out = {}
    for category, images in by_image.items():
        lines = []
        for image, rs in images.items():
            for r in rs:
                reply = (r["pred_raw"] or "").strip()
                for space in ("\t", "\r", "\n"):
                    reply = reply.replace(space, " ")
                lines.append(f"{image.split('/', 1)[-1]}\t{r['question']}\t{r['answer'].capitalize()}\t{reply}\n")
        out[category] = "".join(lines)
    return out


def sample_rows() -> list[dict[str, Any]]:
    """A few rows in the lmms-lab/MME schema with drawn images (built-in offline sample): two images
    for a perception subtask and one for a cognition subtask, two questions each."""
    rows = []
    images = [("existence", "circle"), ("existence", "square"), ("commonsense_reasoning", "circle")]
    for i, (category, shape) in enumerate(images):
        other = "square" if shape == "circle" else "circle"
        if category == "existence":
            questions = [(f"Is there a {shape} in this image?", "Yes"), (f"Is there a {other} in this image?", "No")]
        else:
            questions = [("Could this shape roll on a flat table?", "Yes"), ("Does this shape have corners?", "No")]
        png = data.png_bytes(data.drawn_image(100 + i, shape=shape))
        for question, answer in questions:
            rows.append({"question_id": f"{category}/{i:04d}.png", "question": question + YES_NO_SUFFIX,
                         "answer": answer, "category": category, "image": {"bytes": png, "path": None}})
    return rows


class Mme(Task):
    name = "mme"
    paper_column = "MME-P"
    paper_metric = "mme_perception"
    paper_scale = 1.0  # MME scores are points (max 2000), printed as is
    # Points: the perception total moves by about 20 between runs of the same model (prompt, decoding).
    tolerances = {"mme_perception": 20.0, "mme_cognition": 20.0, "mme_*_score": 10.0}
    SOURCES = SOURCES
    ARGS = data.source_args("test")

    def __init__(self, **task_args: Any) -> None:
        super().__init__(**task_args)
        self.split = self.args["split"]
        source = data.task_source(self.args, SOURCES, lambda: data.write_sample(
            "mme", sample_rows(), "test", data.features_from(FEATURES)))
        self.read = source.read(LAYOUTS, self.split, self.args["config"], COLUMNS)
        self.ds = self.read.ds

    def docs(self) -> Docs:
        # question_id repeats for the two questions of an image: number them in dataset order.
        seen: dict[str, int] = defaultdict(int)

        def doc_id(row: dict[str, Any]) -> str:
            key = image_key(row)
            seen[key] += 1
            return f"{key}/{seen[key] - 1}"
        return data.lazy_docs(self.ds, ("question_id", "category"), doc_id)

    def fingerprint(self) -> dict[str, Any]:
        return self.read.fingerprint()

    def build_request(self, doc: Doc) -> Request:
        row = doc.row
        return Request(doc.doc_id, mme_prompt(row["question"]), [data.decode_image(row["image"])],
                       {"max_new_tokens": 16})

    def process(self, doc: Doc, output: Any) -> dict[str, Any]:
        return {"category": doc.row["category"], "image": image_key(doc.row), "question": doc.row["question"],
                "answer": doc.row["answer"].strip().lower(),
                "pred": "none" if output is None else extract_answer(output), "pred_raw": output}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        return mme_scores(records)

    def export(self, records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
        if not answers_every_question(self, records, len(self.ds), "eval_tool files"):
            return []
        paths = []
        for category, text in eval_tool_files(records).items():
            paths.append(Path(out_dir) / "mme_eval_tool" / f"{category}.txt")
            atomic_write_text(paths[-1], text)
        return paths

    @classmethod
    def paired_parts(cls, samples: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, list[float]] | None:
        """Per image (acc+ pairs its two questions, so an image is the unit), for each perception
        subtask: (questions right, questions, both right, 1)."""
        by_image: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for _, r in samples:
            by_image[r["image"]].append(r)
        out = {}
        for image, rs in by_image.items():
            parts = [0.0] * (4 * len(PERCEPTION))
            if rs[0]["category"] in PERCEPTION:
                right = [r["pred"] == r["answer"] for r in rs]
                i = 4 * PERCEPTION.index(rs[0]["category"])
                parts[i:i + 4] = [sum(right), len(right), float(len(right) == QUESTIONS_PER_IMAGE and all(right)), 1.0]
            out[image] = parts
        return out

    @staticmethod
    def headline_from_parts(sums: Any) -> Any:
        """mme_perception: the sum over the subtasks present of (acc + acc+) * 100."""
        import numpy as np
        right, asked, both, images = (sums[..., k::4] for k in range(4))
        acc = np.divide(right, asked, out=np.zeros_like(right, dtype=float), where=asked > 0)
        acc_plus = np.divide(both, images, out=np.zeros_like(both, dtype=float), where=images > 0)
        return ((acc + acc_plus) * 100).sum(axis=-1)

    @classmethod
    def throughput_requests(cls, n: int) -> list[Request]:
        """Images of a COCO-derived MME subset's size (640x427), MME's yes/no question in lmms-eval's
        prompt, and the 3 tokens a yes/no answer takes."""
        images = photo_sized(min(n, 16), (640, 427))
        return [Request(f"mme_{i}", mme_prompt(f"Is there a {COCO_OBJECTS[i % len(COCO_OBJECTS)]} in this image?"
                                               f"{YES_NO_SUFFIX}"),
                        [images[i % len(images)]], {"max_new_tokens": 3}) for i in range(n)]

