"""What several benchmarks share: the short-answer prompt of LLaVA-1.5 / lmms-eval, and the shape of a
one-image question-answering task over a `datasets` split."""
from __future__ import annotations

import logging
from typing import Any, Sequence

from PIL import Image

from omnibench import data
from omnibench.protocol import Doc, Docs, Request, Task

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
log = logging.getLogger("omnibench")


def answers_every_question(task: Task, records: Sequence[dict[str, Any]], total: int, what: str) -> bool:
    """Whether a run answered all `total` questions of its split. An evaluation server or an official
    script rejects a file with questions missing, so a run with --limit writes no `what` (and says so)."""
    if len(records) == total:
        return True
    log.warning(f"{task.name}: no {what} written: the run answered {len(records)} of the split's {total} "
                f"questions (--limit); the official tool needs every one")
    return False


class SingleImageQA(Task):
    """Rows with a `question` and one image; subclasses set `self.read` (a `data.Read`: the rows and where
    they came from), `self.ds` (its rows) and `self.split`, and say how a row is identified (`doc_id` of
    the `id_columns`) and, if not from its `image` column, where its image is."""

    max_new_tokens = 16
    id_columns: tuple[str, ...] = ()

    def doc_id(self, row: dict[str, Any]) -> str:
        raise NotImplementedError

    def image(self, row: dict[str, Any]) -> Image.Image:
        return data.decode_image(row["image"])

    def docs(self) -> Docs:
        return data.lazy_docs(self.ds, self.id_columns, self.doc_id)

    def fingerprint(self) -> dict[str, Any]:
        return self.read.fingerprint()

    def build_request(self, doc: Doc) -> Request:
        return Request(doc.doc_id, doc.row["question"] + SHORT_ANSWER, [self.image(doc.row)],
                       {"max_new_tokens": self.max_new_tokens})


def photo_sized(n: int, size: tuple[int, int], seed: int = 0) -> list[Image.Image]:
    """`n` noise images of a benchmark's typical size, for throughput workloads: preprocessing (resize,
    normalise) costs what it costs on a photo of that size."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w, h = size
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


# Objects POPE asks about (COCO categories), for throughput prompts of the real lengths.
COCO_OBJECTS = ("dining table", "person", "car", "chair", "cup", "traffic light", "bottle", "teddy bear",
                "cell phone", "fire hydrant", "baseball glove", "knife", "bowl", "tennis racket", "tv", "dog")
