"""POPE (Li et al. 2023): yes/no object-hallucination probes on COCO, three splits.

Data: lmms-lab/POPE (or its lmms-lab-encoder mirror) holds the 9,000 questions twice: `split=test` reads
the default config (one split, a `category` column), `split=adversarial` / `popular` / `random` (or
several joined by '+', as lmms-eval's pope_full) read the Full config. Either way a row's category is
its POPE split, and the scores are the same.

Answer extraction and metrics follow the official `evaluate.py` (as used by LLaVA's eval_pope.py):
keep the text before the first '.', drop commas, split on spaces; the answer is "no" if any word is
exactly "No", "no" or "not", else "yes". Metrics per split (random, popular, adversarial): accuracy,
precision, recall, F1 and yes-ratio, then their mean over the splits present. The paper's POPE column
is the mean F1 (the number LLaVA-1.5 and its successors report).

lmms-eval differs in three ways (pinned in tests/test_lmms_eval_parity.py): it scores
`pred.lower().strip() == answer`, so "Yes, there is." is wrong there and right here; its yes-ratio is
the share of gold "yes" answers, not of predicted ones; and its `pope` task pools the three splits
instead of averaging them. We follow the official script. We cap answers at 16 new tokens (a yes/no
answer needs a few; lmms-eval asks for 128, which only matters for a model that rambles before it answers).
"""
from __future__ import annotations

from typing import Any, Sequence

from omnibench import data
from omnibench.protocol import Doc, OmnibenchError, Request
from omnibench.tasks.common import COCO_OBJECTS, SHORT_ANSWER, SingleImageQA, photo_sized

SPLITS = ("adversarial", "popular", "random")
# The hub holds POPE twice: all 9,000 questions as one `test` split with a `category` column, and the
# `Full` config with one split per category (what lmms-eval's pope_adv / pope_pop / pope_random read).
LAYOUTS = (data.Layout("lmms-lab/POPE (default config)", "default", ("test",)),
           data.Layout("lmms-lab/POPE (Full config)", "Full", SPLITS))
SOURCES = (
    data.HubSource("lmms-lab/POPE", "4db1276663dfa5eb8ad16a52d24c31a09e470896",
                   "default config (test) and Full config (adversarial, popular, random)"),
    data.HubSource("lmms-lab-encoder/POPE", "4db1276663dfa5eb8ad16a52d24c31a09e470896",
                   "a mirror of lmms-lab/POPE (what lmms-eval 0.7.3 reads)"),
)
COLUMNS = ("question_id", "question", "answer", "image")


def extract_yes_no(text: str) -> str:
    """The official POPE rule: first sentence, commas removed, 'no' if it says No/no/not."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def binary_metrics(preds: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1, yes-ratio with "yes" as the positive class (official)."""
    tp = sum(p == "yes" and l == "yes" for p, l in zip(preds, labels))
    fp = sum(p == "yes" and l == "no" for p, l in zip(preds, labels))
    tn = sum(p == "no" and l == "no" for p, l in zip(preds, labels))
    # A failed sample (pred "none") is a miss: it is never a true positive or a true negative.
    fn = sum(p != "yes" and l == "yes" for p, l in zip(preds, labels))
    n = len(preds)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall,
            "f1": f1, "yes_ratio": sum(p == "yes" for p in preds) / n if n else 0.0}


def pope_scores(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per-split and mean metrics from records with `category`, `pred` and `answer`."""
    out: dict[str, float] = {}
    per_split = []
    for split in SPLITS:
        rows = [r for r in records if r["category"] == split]
        if not rows:
            continue
        m = binary_metrics([r["pred"] for r in rows], [r["answer"] for r in rows])
        per_split.append(m)
        out.update({f"pope_{split}_{k}": v for k, v in m.items()})
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        if per_split:
            out[f"pope_{key}"] = sum(m[key] for m in per_split) / len(per_split)
    return out


def parse_split(split: str) -> list[str]:
    """`test` (the default config), or '+'-separated splits of the Full config, in the official order."""
    if split == "test":
        return [split]
    parts = [p.strip() for p in split.split("+")]
    unknown = [p for p in parts if p not in SPLITS]
    if unknown:
        raise OmnibenchError(f"task pope: unknown split '{unknown[0]}' (known: test, {', '.join(SPLITS)}, or "
                             f"several of these three joined by '+', e.g. {'+'.join(SPLITS)})")
    return [s for s in SPLITS if s in parts]


def sample_rows() -> list[dict[str, Any]]:
    """A few rows in the lmms-lab/POPE schema with drawn images (built-in offline sample)."""
    rows = []
    objects = ["circle", "square"]
    for i in range(6):
        shape = objects[i % 2]
        asked = shape if i < 3 else objects[(i + 1) % 2]  # each split: one yes, one no
        rows.append({
            "id": str(i), "question_id": str(i + 1),
            "question": f"Is there a {asked} in the image?",
            "answer": "yes" if asked == shape else "no",
            "image_source": f"drawn_{i}",
            "image": {"bytes": data.png_bytes(data.drawn_image(i, shape=shape)), "path": None},
            "category": SPLITS[i % 3],
        })
    return rows


def write_sample() -> str:
    """The built-in sample in both hub layouts: the rows as the default config's test split, and split
    by category as the Full config."""
    rows = sample_rows()
    features = data.features_from(FEATURES)
    full = {split: [r for r in rows if r["category"] == split] for split in SPLITS}
    return data.write_hub_layout("pope", {"default": {"test": rows}, "Full": full}, features)


FEATURES = {"id": "string", "question_id": "string", "question": "string", "answer": "string",
            "image_source": "string", "image": "image", "category": "string"}


class Pope(SingleImageQA):
    name = "pope"
    paper_column = "POPE"
    paper_metric = "pope_f1"
    neutral = ("*yes_ratio",)
    tolerances = {"pope_*": 0.01}  # one point of F1 / accuracy
    SOURCES = SOURCES
    ARGS = data.source_args("test", split_help="test (the default config: all three categories), or adversarial, "
                            "popular, random of the Full config, several joined by '+'")
    id_columns = ("category", "question_id")

    def __init__(self, **task_args: Any) -> None:
        super().__init__(**task_args)
        self.split = self.args["split"]
        source = data.task_source(self.args, SOURCES, write_sample)
        parts = []
        for split in parse_split(self.split):
            part = source.read(LAYOUTS, split, self.args["config"], COLUMNS)
            if "category" not in part.ds.column_names:  # a Full split is one category: say which
                part.ds = part.ds.add_column("category", [split] * len(part.ds))
            parts.append(part)
        self.read = data.concat(parts)
        self.ds = self.read.ds

    def doc_id(self, row: dict[str, Any]) -> str:
        return f"{row['category']}/{row['question_id']}"

    def process(self, doc: Doc, output: Any) -> dict[str, Any]:
        return {"category": doc.row["category"], "answer": doc.row["answer"].strip().lower(),
                "pred": "none" if output is None else extract_yes_no(output), "pred_raw": output}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        return pope_scores(records)

    @classmethod
    def paired_parts(cls, samples: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, list[float]] | None:
        """Per question, for each split: (true positive, false positive, false negative, asked)."""
        out = {}
        for sample_id, r in samples:
            parts = [0.0] * (4 * len(SPLITS))
            if r["category"] in SPLITS:
                i = 4 * SPLITS.index(r["category"])
                yes, gold_yes = r["pred"] == "yes", r["answer"] == "yes"
                parts[i:i + 4] = [yes and gold_yes, yes and not gold_yes, not yes and gold_yes, 1.0]
            out[sample_id] = [float(x) for x in parts]
        return out

    @staticmethod
    def headline_from_parts(sums: Any) -> Any:
        """pope_f1: the mean over the splits asked of 2tp / (2tp + fp + fn) (the official 2PR/(P+R))."""
        import numpy as np
        tp, fp, fn, n = (sums[..., k::4] for k in range(4))
        denominator = 2 * tp + fp + fn
        f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp, dtype=float), where=denominator > 0)
        asked = n > 0
        return (f1 * asked).sum(axis=-1) / asked.sum(axis=-1)

    @classmethod
    def throughput_requests(cls, n: int) -> list[Request]:
        """COCO val2014-sized images (640x480), the POPE question with the short-answer prompt, and the
        3 tokens a yes/no answer takes ("Yes", ".", end of text)."""
        images = photo_sized(min(n, 16), (640, 480))
        return [Request(f"pope_{i}", f"Is there a {COCO_OBJECTS[i % len(COCO_OBJECTS)]} in the image?" + SHORT_ANSWER,
                        [images[i % len(images)]], {"max_new_tokens": 3}) for i in range(n)]

