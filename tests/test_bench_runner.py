"""Runner overhead per sample with a zero-cost adapter (pytest-benchmark; enabled with
`python -m pytest tests/test_bench_runner.py --benchmark-enable`; in the normal suite it runs once as
a smoke test). Goal: well under 1 ms per sample, so the harness never starves a GPU."""
import itertools

from omnibench.config import RunConfig
from omnibench.protocol import Docs, ModelAdapter, Request, Task
from omnibench.runner import Runner

N_DOCS = 2000


class EchoTask(Task):
    name = "echo"
    paper_column = ""

    def docs(self):
        rows = [{"question": f"question {i}", "answer": "yes" if i % 2 else "no"} for i in range(N_DOCS)]
        return Docs.from_rows(rows, lambda r: r["question"])

    def build_request(self, doc):
        return Request(doc.doc_id, doc.row["question"])

    def process(self, doc, output):
        return {"correct": output == doc.row["answer"]}

    def aggregate(self, records):
        return {"accuracy": sum(r["correct"] for r in records) / len(records)}


class ZeroCost(ModelAdapter):
    name = "zero"

    def generate_text(self, requests):
        return ["yes"] * len(requests)


def test_runner_overhead_per_sample(benchmark, tmp_path, monkeypatch):
    from omnibench import registry
    monkeypatch.setattr(registry, "get_task_class", lambda name: EchoTask)
    monkeypatch.setattr(registry, "get_model_class", lambda name: ZeroCost)
    counter = itertools.count()

    def one_run():
        cfg = RunConfig(model="zero", tasks=["echo"], batch_size=32, output_path=str(tmp_path / str(next(counter))))
        return Runner(cfg, ZeroCost).run()

    out = benchmark.pedantic(one_run, rounds=3, iterations=1)
    assert out["results"]["echo"]["accuracy"] == 0.5
    assert out["n_samples"]["echo"]["total"] == N_DOCS
    if benchmark.stats is not None:
        per_sample_ms = benchmark.stats.stats.median / N_DOCS * 1e3
        benchmark.extra_info["per_sample_ms"] = per_sample_ms
        print(f"\nrunner overhead: {per_sample_ms:.3f} ms/sample (median of 3 runs of {N_DOCS} samples)")
