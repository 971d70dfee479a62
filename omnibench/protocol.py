"""The two contracts the engine runs on: a Task turns dataset rows into requests and scores outputs;
a ModelAdapter answers requests. Neither knows about the other."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from PIL import Image


class OmnibenchError(Exception):
    """A user-facing error: its message is one line that names the problem and the fix."""


@dataclass
class Request:
    """One question to a model (understanding) or one caption to draw (text-to-image)."""

    sample_id: str
    prompt: str
    images: list[Image.Image] = field(default_factory=list)
    # Generation settings the task asks for (max_new_tokens, ...); the adapter applies its defaults.
    gen_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass
class Doc:
    """A dataset row with the stable id the cache is keyed by."""

    doc_id: str
    row: dict[str, Any]


class Task(abc.ABC):
    """A benchmark: rows -> requests -> per-sample records -> aggregate metrics.

    Subclasses set `name`, `output_type`, and implement the abstract methods. `task_args` come from
    `--task_args k=v,...` (e.g. `data_dir=...`, `split=...`, `sample=true`).
    """

    name: str = ""
    output_type: Literal["text", "image"] = "text"
    # The paper's table (a file in reports/paper/) and column this task fills this task fills (e.g. "POPE") and the metric key it reads.
    paper_table: str = "table1_understanding"
    paper_column: str = ""
    paper_metric: str = ""
    # Factor from the metric to the paper's printed unit: 100 for a fraction shown as a percentage.
    paper_scale: float = 100.0

    def __init__(self, **task_args: str) -> None:
        self.task_args = dict(task_args)
        # Set by the runner before generation: this run's folder. Image outputs are paths relative to it.
        self.run_dir: Path | None = None

    @abc.abstractmethod
    def docs(self) -> Sequence[Doc]:
        """All rows of the evaluated split, in a fixed order, each with a unique stable id."""

    def fingerprint(self) -> dict[str, Any]:
        """Identifies the data evaluated (source, split, content hash); stored in the manifest."""
        return {}

    @abc.abstractmethod
    def build_request(self, doc: Doc) -> Request:
        """Image(s) + plain question (the model adds its own chat template). May raise on a corrupt
        image; the runner records the sample as failed with the reason and goes on."""

    @abc.abstractmethod
    def process(self, doc: Doc, output: Any) -> dict[str, Any]:
        """Per-sample record from the model output: JSON-serialisable, kept in samples_<task>.jsonl
        and fed to `aggregate`."""

    @abc.abstractmethod
    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """Benchmark metrics over all finished records (failed samples count as wrong where the
        official scorer would count a missing answer as wrong)."""

    def export(self, records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
        """Write evaluation-server submission files (test splits); returns the paths written."""
        return []


class ModelAdapter(abc.ABC):
    """A model behind the engine. `model_args` come from `--model_args k=v,...`."""

    name: str = ""

    def __init__(self, device: str = "cpu", dtype: str = "auto", **model_args: str) -> None:
        self.device = device
        self.dtype = dtype
        self.model_args = dict(model_args)

    def arg_choice(self, key: str, known: Sequence[str | None], default: str | None = None) -> str | None:
        """`model_args[key]` (or `default`), which must be one of `known` (None: the argument may be absent)."""
        value = self.model_args.get(key, default)
        if value not in known:
            names = ", ".join(k for k in known if k is not None)
            raise OmnibenchError(f"unknown {key} '{value}' for model {self.name} (known: {names})")
        return value

    def config(self) -> dict[str, Any]:
        """Everything that changes outputs; hashed into the cache key."""
        return {"model": self.name, "dtype": self.dtype, **self.model_args}

    def generate_text(self, requests: Sequence[Request]) -> list[str]:
        raise OmnibenchError(f"model '{self.name}' does not answer understanding tasks")

    def generate_images(self, requests: Sequence[Request]) -> list[Image.Image]:
        raise OmnibenchError(f"model '{self.name}' does not generate images")


def chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
