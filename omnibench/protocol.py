"""The two contracts the engine runs on: a Task turns dataset rows into requests and scores outputs;
a ModelAdapter answers requests. Neither knows about the other."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Sequence, overload

from PIL import Image

if TYPE_CHECKING:
    from omnibench.args import Arg


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
class Prepared:
    """A request with its host-side inputs ready: preprocessed images (tensors) and prompt token ids."""

    request: Request
    pixels: list[Any]
    ids: list[int]


@dataclass
class Doc:
    """A dataset row with the stable id the cache is keyed by."""

    doc_id: str
    row: dict[str, Any]


class Docs(Sequence[Doc]):
    """The rows a task evaluates, in a fixed order: every id up front (a column read, cheap), each row
    read only when asked for, so a rank holds its current batch and not the split (memory stays flat in
    the dataset's size)."""

    def __init__(self, ids: Sequence[str], row: Callable[[int], dict[str, Any]]) -> None:
        self.ids = [str(i) for i in ids]
        self._row = row

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]], doc_id: Callable[[dict[str, Any]], str]) -> "Docs":
        """Rows already in memory (small splits: prompt lists, built-in samples)."""
        return cls([doc_id(r) for r in rows], rows.__getitem__)

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, i: int) -> Doc: ...
    @overload
    def __getitem__(self, i: slice) -> list[Doc]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return Doc(self.ids[i], self._row(i))


class Task(abc.ABC):
    """A benchmark: rows -> requests -> per-sample records -> aggregate metrics.

    Subclasses set `name`, `output_type`, declare their `--task_args` in `ARGS`, and implement the
    abstract methods. `self.args` holds every declared argument, parsed, defaults filled in.
    """

    ARGS: tuple["Arg", ...] = ()
    # The hub repositories that publish its dataset (`data.HubSource`), the first its default source.
    SOURCES: tuple[Any, ...] = ()

    name: str = ""
    output_type: Literal["text", "image"] = "text"
    # The paper's table (a file in reports/paper/), the column this task fills (e.g. "POPE") and the metric key it reads.
    paper_table: str = "table1_understanding"
    paper_column: str = ""
    paper_metric: str = ""
    # Factor from the metric to the paper's printed unit: 100 for a fraction shown as a percentage.
    paper_scale: float = 100.0
    # Which way each metric improves (fnmatch patterns over metric names; every other metric is
    # higher-is-better). Neutral metrics describe behaviour, not quality (e.g. a yes-ratio): never flagged.
    lower_is_better: tuple[str, ...] = ()
    neutral: tuple[str, ...] = ()
    # How far a metric may move the wrong way between two runs before a regression gate fails, in the
    # metric's own unit (fnmatch pattern -> amount; e.g. MME points, accuracy fractions). A metric
    # matching no pattern has none declared (the gate allows no drop unless told otherwise).
    tolerances: dict[str, float] = {}

    def direction(self, metric: str) -> str:
        """"higher", "lower" or "neutral": how a regression gate reads a change of `metric`."""
        import fnmatch
        if any(fnmatch.fnmatch(metric, p) for p in self.neutral):
            return "neutral"
        return "lower" if any(fnmatch.fnmatch(metric, p) for p in self.lower_is_better) else "higher"

    @classmethod
    def tolerance(cls, metric: str) -> float | None:
        """The declared tolerance of `metric` in its own unit, or None."""
        import fnmatch
        return next((t for p, t in cls.tolerances.items() if fnmatch.fnmatch(metric, p)), None)

    @classmethod
    def paired_parts(cls, samples: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, list[float]] | None:
        """For a paired test between two runs of this task: each resampling unit's additive parts of the
        headline metric (`paper_metric`), from (sample id, per-sample record) pairs. Units are matched by
        id across the runs and resampled together; `headline_from_parts` of the parts summed over every
        unit is the headline. None: the headline does not decompose so (FID), or these records have no
        score (test splits)."""
        return None

    @staticmethod
    def headline_from_parts(sums: Any) -> Any:
        """The headline metric from parts summed over units (numpy, one row per resample; the last axis
        is the parts). Default: parts (score, count), the headline their ratio (an accuracy)."""
        return sums[..., 0] / sums[..., 1]

    @classmethod
    def throughput_requests(cls, n: int) -> list[Request]:
        """`n` requests of this benchmark's real shape for the speed report's evaluation-throughput table:
        prompts as this task builds them, images of its typical size (drawn), the answer length its
        answers have (as `max_new_tokens`, so a random-weight model generates that many tokens)."""
        raise OmnibenchError(f"task '{cls.name}' declares no throughput workload")

    def __init__(self, **task_args: Any) -> None:
        from omnibench.args import resolve
        self.args: dict[str, Any] = resolve(f"task {self.name}", self.ARGS, task_args, "--task_args")
        # Set by the runner before generation: this run's folder. Image outputs are paths relative to it.
        self.run_dir: Path | None = None

    @abc.abstractmethod
    def docs(self) -> Docs:
        """All rows of the evaluated split, in a fixed order, each with a unique stable id, read lazily."""

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
    """A model behind the engine. It declares its `--model_args` in `ARGS`; `self.args` holds every one
    of them, parsed, defaults filled in."""

    name: str = ""
    ARGS: tuple["Arg", ...] = ()

    def __init__(self, device: str = "cpu", dtype: str = "auto", **model_args: Any) -> None:
        self.device = device
        self.dtype = dtype
        self.args: dict[str, Any] = self.resolve_args(model_args)

    @classmethod
    def resolve_args(cls, model_args: dict[str, Any]) -> dict[str, Any]:
        """The declared arguments, parsed and completed with defaults; an unknown key or a bad value is
        a one-line error naming the known ones."""
        from omnibench.args import resolve
        return resolve(f"model {cls.name}", cls.ARGS, model_args, "--model_args")

    @classmethod
    def resolved_config(cls, dtype: str, model_args: dict[str, Any]) -> dict[str, Any]:
        """Everything that changes this model's outputs, known before it is built: the run's identity
        (hashed into the run folder's name) is taken from this, so it holds every default."""
        return {"model": cls.name, "dtype": dtype, **cls.resolve_args(model_args)}

    def config(self) -> dict[str, Any]:
        return {"model": self.name, "dtype": self.dtype, **self.args}

    def provenance(self) -> dict[str, Any]:
        """Where this model's weights came from beyond its arguments (e.g. a submodule read from its own
        published file); recorded in the manifest of a run that loaded the model."""
        return {}

    @classmethod
    def weights_warning(cls, args: dict[str, Any]) -> str | None:
        """A line for reports when these arguments give a model whose scores mean nothing about the
        published model (random weights); None for a real checkpoint."""
        return None

    def generate_text(self, requests: Sequence[Request]) -> list[str]:
        raise OmnibenchError(f"model '{self.name}' does not answer understanding tasks")

    def prepare_text(self, requests: Sequence[Request]) -> list[Any]:
        """The host-side work of `generate_text` for each request (tokenizing, image resize and
        normalisation), one item per request, in order. The runner calls it for the next batch while
        the device answers this one (on another thread), then `generate_prepared` on a slice of items.
        Default: nothing to do ahead; the items are the requests."""
        return list(requests)

    def preprocessor(self) -> Callable[[Sequence[Request]], list[Any]] | None:
        """`prepare_text` as a picklable function of the requests alone (tokenizer and sizes bound in, no
        model), which `prepare_text` itself calls, so worker processes can run it (omnibench.prep);
        None (default): the work needs the adapter, it runs on the caller's thread."""
        return None

    def generate_prepared(self, items: Sequence[Any]) -> list[str]:
        """`generate_text` on `prepare_text`'s items; the same answers as `generate_text` on their requests."""
        return self.generate_text(items)

    def generate_images(self, requests: Sequence[Request]) -> list[Image.Image]:
        raise OmnibenchError(f"model '{self.name}' does not generate images")


class SpeedProtocol(abc.ABC):
    """What the speed sweep (run_speed.py) times, declared by an adapter that subclasses it beside
    ModelAdapter; the sweep never probes for methods. Tensors are torch tensors."""

    @abc.abstractmethod
    def prefill(self, input_ids: Any, max_new_tokens: int = 0) -> Any:
        """Read a (batch, length) context of token ids once; return the decoding state, whose `logits`
        are the last position's. `max_new_tokens`: how many decode steps will follow (a static cache
        may size itself by it; 0: unknown)."""

    @abc.abstractmethod
    def decode_step(self, state: Any, token: Any) -> Any:
        """Feed one token per row (batch,), advance `state` in place, return the next logits (batch, V)."""

    def speed_settings(self) -> dict[str, Any]:
        """What this adapter's decode path runs on (CUDA graphs, fused kernels, attention implementation,
        cache kind), recorded with every speed point."""
        return {}

    def speed_context(self, length: int) -> Any:
        """(1, length) ordinary text token ids. Time and memory per position do not depend on which
        tokens fill the context: ids drawn (seeded) from the first 1000 of the vocabulary."""
        import torch
        tokenizer = getattr(self, "tokenizer", None)
        high = min(len(tokenizer), 1000) if tokenizer is not None else 1000
        return torch.randint(0, high, (1, length), generator=torch.Generator().manual_seed(length))


def random_weights_warning(preset: str | None) -> str | None:
    """The report line of a model built from a preset (random weights) instead of a checkpoint."""
    if preset is None:
        return None
    return f"random weights (preset={preset}): these scores measure the pipeline, not the published model"


def chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
