"""GQA (Hudson & Manning 2019): compositional questions on Visual Genome images, testdev-balanced split.

The official `eval.py` compares the submitted prediction with the gold answer by plain string equality
and averages over the questions marked `isBalanced`, also per structural type (verify, query, choose,
logical, compare), per semantic type (obj, attr, rel, cat, global) and binary vs open (open = structural
type "query"). It leaves the answer to the submitter, so the prediction is prepared as LLaVA's
`convert_gqa_for_eval.py` does after its generation strips the output: strip, remove trailing periods,
lower case ("Yes." -> "yes"). Gold answers are used as given. The paper's GQA column is that accuracy.

lmms-eval differs: `exact_match` with ignore_case and ignore_punctuation deletes every punctuation
mark from both sides, so "tshirt" matches a gold "t-shirt" there and not here. We follow the official
script with LLaVA's preparation.

On the hub each split comes as two configs joined on the image id: `<split>_balanced_instructions`
(id, imageId, question, answer, ...) and `<split>_balanced_images` (id, image). `testdev` (the paper's
split) is scored; `test` and `challenge` have no answers (the hub keeps id, imageId, question and
isBalanced) and are only exported.

Export: `<split>_balanced_predictions.json`, the official predictions format, a JSON list of
{"questionId": str, "prediction": str} with every question of the split, under the name eval.py reads
for `--tier <split>_balanced` (`{tier}_predictions.json`; it stops on a balanced question without a
prediction, so a --limit run writes none).
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from omnibench import data
from omnibench.cache import atomic_write_text
from omnibench.protocol import Doc, OmnibenchError
from omnibench.tasks.common import SingleImageQA, answers_every_question

SPLIT = "testdev"
SPLITS = ("testdev", "test", "challenge")
INSTRUCTIONS = (data.Layout("lmms-lab/GQA ({split}_balanced_instructions config)", "{split}_balanced_instructions",
                            SPLITS),)
IMAGES = (data.Layout("lmms-lab/GQA ({split}_balanced_images config)", "{split}_balanced_images", SPLITS),)
# The repository also holds the train and val configs (tens of GB), which no evaluation reads.
_FILES = ("README.md", *(f"{split}_balanced_*/*" for split in SPLITS))
SOURCES = (
    data.HubSource("lmms-lab/GQA", "main", "<split>_balanced_instructions + <split>_balanced_images configs for "
                   "testdev, test, challenge (and train, val, *_all_*)", _FILES),
    data.HubSource("lmms-lab-encoder/GQA", "main", "a mirror of lmms-lab/GQA (what lmms-eval 0.7.3 reads)", _FILES),
)


def configs(split: str) -> tuple[str, str]:
    """The hub's (instructions, images) configs of a split's balanced questions."""
    return f"{split}_balanced_instructions", f"{split}_balanced_images"


INSTRUCTIONS_CONFIG, IMAGES_CONFIG = configs(SPLIT)


def normalize_prediction(text: str) -> str:
    """LLaVA's submission preparation: stripped output, trailing periods removed, lower case."""
    return text.strip().rstrip(".").lower()


def gqa_scores(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Official accuracy over balanced questions, overall, binary/open and per question type."""
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if not r["is_balanced"]:
            continue
        score = float(r["prediction"] == r["answer"])
        groups["gqa_accuracy"].append(score)
        groups["gqa_open_accuracy" if r["structural"] == "query" else "gqa_binary_accuracy"].append(score)
        for kind in ("structural", "semantic"):
            if r[kind]:
                key = re.sub(r"[^a-z0-9]+", "_", r[kind].lower()).strip("_")
                groups[f"gqa_{kind}_{key}_accuracy"].append(score)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


def predictions_file(records: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The official predictions format read by eval.py."""
    return [{"questionId": str(r["question_id"]), "prediction": r["prediction"]} for r in records]


def sample_rows(split: str = SPLIT) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A few rows in the two lmms-lab/GQA `<split>_balanced` schemas (instructions, images) with drawn
    images; two questions share an image, as in the real split. `annotations` is left out. A test
    split's instructions have only the columns the hub keeps for them (no answer)."""
    images = [{"id": f"n{500 + i}", "image": {"bytes": data.png_bytes(data.drawn_image(200 + i, shape=shape)),
                                              "path": None}}
              for i, shape in enumerate(["circle", "square"])]
    specs = [  # image, question, answer, full answer, structural, semantic, detailed
        (0, "Is there a circle?", "yes", "Yes, there is a circle.", "verify", "obj", "existC"),
        (0, "What shape is it?", "circle", "It is a circle.", "query", "cat", "categoryThis"),
        (1, "Is the shape round or square?", "square", "The shape is square.", "choose", "attr", "chooseAttr"),
        (1, "Is it a circle or a ball?", "no", "No, it is a square.", "logical", "obj", "existOrC"),
    ]
    instructions = []
    for i, (img, question, answer, full, structural, semantic, detailed) in enumerate(specs):
        instructions.append({
            "id": f"20{i:06d}", "imageId": images[img]["id"], "question": question, "answer": answer,
            "fullAnswer": full, "isBalanced": True,
            "groups": {"global": None if structural != "query" else "shape", "local": f"{i:02d}-shape"},
            "entailed": "[]", "equivalent": f"['20{i:06d}']",
            "types": {"structural": structural, "semantic": semantic, "detailed": detailed},
            "semantic": [{"operation": "select", "argument": "shape (0)", "dependencies": []},
                         {"operation": structural, "argument": answer, "dependencies": [0]}],
            "semanticStr": f"select: shape (0)->{structural}: {answer} [0]",
        })
    if split != SPLIT:
        instructions = [{"id": f"{split[:2]}{r['id']}", "imageId": r["imageId"], "question": r["question"],
                         "isBalanced": True} for r in instructions]
    return instructions, images


def sample_features(split: str = SPLIT) -> tuple[dict[str, Any], dict[str, Any]]:
    import datasets
    string = datasets.Value("string")
    if split != SPLIT:
        return ({"id": "string", "imageId": "string", "question": "string", "isBalanced": "bool"},
                {"id": "string", "image": "image"})
    instructions = {
        "id": "string", "imageId": "string", "question": "string", "answer": "string", "fullAnswer": "string",
        "isBalanced": "bool", "groups": {"global": string, "local": string},
        "entailed": "string", "equivalent": "string",
        "types": {"structural": string, "semantic": string, "detailed": string},
        "semantic": [{"operation": string, "argument": string,
                      "dependencies": datasets.Sequence(datasets.Value("int32"))}],
        "semanticStr": "string"}
    return instructions, {"id": "string", "image": "image"}


def write_sample() -> str:
    """The built-in sample as lmms-lab/GQA holds it: an instructions and an images config per split."""
    tables, features = {}, {}
    for split in SPLITS:
        instructions, images = sample_rows(split)
        for config, rows, spec in zip(configs(split), (instructions, images), sample_features(split)):
            tables[config], features[config] = {split: rows}, data.features_from(spec)
    return data.write_hub_layout("gqa", tables, features)


class GQA(SingleImageQA):
    name = "gqa"
    paper_column = "GQA"
    paper_metric = "gqa_accuracy"
    tolerances = {"gqa_*": 0.01}
    # testdev: the testdev-balanced set the paper reports; test and challenge: server submissions.
    SOURCES = SOURCES
    ARGS = data.source_args(SPLIT, SPLITS)
    id_columns = ("id",)

    def __init__(self, **task_args: Any) -> None:
        super().__init__(**task_args)
        self.split = self.args["split"]
        self.configs = configs(self.split)
        if self.args["config"] is not None:
            raise OmnibenchError(f"task gqa reads two configs ({', '.join(self.configs)}), named by the split: "
                                 f"give split=, not config=")
        source = data.task_source(self.args, SOURCES, write_sample)
        self.read = source.read(INSTRUCTIONS, self.split, columns=("id", "imageId", "question"))
        self.images_read = source.read(IMAGES, self.split, columns=("id", "image"))
        self.ds, self.images = self.read.ds, self.images_read.ds
        # Only the id column is read up front; an image is fetched when its question is asked.
        self.image_index = {image_id: i for i, image_id in enumerate(self.images["id"])}

    def doc_id(self, row: dict[str, Any]) -> str:
        return str(row["id"])

    def fingerprint(self) -> dict[str, Any]:
        return {"instructions": self.read.fingerprint(), "images": self.images_read.fingerprint()}

    def image(self, row: dict[str, Any]) -> Image.Image:
        index = self.image_index.get(row["imageId"])
        if index is None:
            raise OmnibenchError(f"gqa image {row['imageId']} of question {row['id']} is not in {self.configs[1]}")
        return data.decode_image(self.images[index]["image"])

    def process(self, doc: Doc, output: Any) -> dict[str, Any]:
        row = doc.row
        types = row.get("types") or {}
        return {"question_id": str(row["id"]), "answer": row.get("answer"),
                "prediction": "" if output is None else normalize_prediction(output), "pred_raw": output,
                "is_balanced": bool(row.get("isBalanced", True)),
                "structural": types.get("structural"), "semantic": types.get("semantic")}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        return gqa_scores(records) if self.split == SPLIT else {}

    @classmethod
    def paired_parts(cls, samples: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, list[float]] | None:
        """Per question: (right, 1) for a balanced question, (0, 0) for another (not scored)."""
        if not samples or any(r.get("answer") is None for _, r in samples):
            return None
        return {sample_id: [float(r["is_balanced"] and r["prediction"] == r["answer"]), float(r["is_balanced"])]
                for sample_id, r in samples}

    def export(self, records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
        if not answers_every_question(self, records, len(self.ds), "predictions file"):
            return []
        path = Path(out_dir) / f"{self.split}_balanced_predictions.json"
        atomic_write_text(path, json.dumps(predictions_file(records)))
        return [path]
