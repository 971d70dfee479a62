"""Run identity: a cached sample is reused only if everything that produced it is unchanged (request,
model config, model code, dataset); otherwise it is recomputed and the log says why. Each test here
would pass on a cache keyed by (model, model_args, seed) alone only if the bug it pins were back."""
import importlib
import json
import logging
import shutil
import uuid

import datasets
import pytest
from PIL import Image

from omnibench import models
from omnibench import tasks
from omnibench import identity
from omnibench.cli import main
from omnibench.config import RunConfig
from omnibench.protocol import ModelAdapter, OmnibenchError
from omnibench.runner import Runner

TOY_MODEL = '''
from PIL import Image
from omnibench.args import Arg
from omnibench.protocol import ModelAdapter

MARK = {mark!r}
CALLS = []


class Toy(ModelAdapter):
    name = "toy"
    ARGS = (Arg("colour", int, 10, "red channel of drawn images"),)

    def generate_text(self, requests):
        CALLS.extend(r.sample_id for r in requests)
        return [f"{{MARK}}|{{r.prompt}}" for r in requests]

    def generate_images(self, requests):
        CALLS.extend(r.sample_id for r in requests)
        return [Image.new("RGB", (8, 8), (self.args["colour"], len(r.prompt) % 255, MARK == "v2" and 99 or 0))
                for r in requests]
'''

TOY_TASK = '''
from omnibench.args import Arg
from omnibench.protocol import Docs, Request, Task


class Echo(Task):
    name = "echo"
    ARGS = (Arg("suffix", str, "?", "appended to each question"),)

    def docs(self):
        rows = [{{"q": f"question {{i}}", "a": str(i)}} for i in range(5)]
        return Docs.from_rows(rows, lambda r: r["q"].split()[1])

    def build_request(self, doc):
        return Request(doc.doc_id, doc.row["q"] + self.args["suffix"])

    def process(self, doc, output):
        return {{"output": output, "correct": output.endswith(doc.row["a"] + self.args["suffix"])}}

    def aggregate(self, records):
        return {{"echo_accuracy": sum(r["correct"] for r in records) / len(records)}}
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A model family and a task added as a user would: their own files plus one registry line each."""
    pkg = f"toyfam_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "src"
    (root / pkg).mkdir(parents=True)
    (root / pkg / "__init__.py").write_text("")
    (root / pkg / "adapter.py").write_text(TOY_MODEL.format(mark="v1"))
    (root / pkg / "echo_task.py").write_text(TOY_TASK.format())
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setitem(models.MODELS, "toy", f"{pkg}.adapter:Toy")
    monkeypatch.setitem(tasks.TASKS, "echo", f"{pkg}.echo_task:Echo")
    identity.code_version.cache_clear()

    class Toy:
        package = pkg
        folder = root / pkg

        @staticmethod
        def module():
            return importlib.import_module(f"{pkg}.adapter")

        @staticmethod
        def edit_model(mark):
            (root / pkg / "adapter.py").write_text(TOY_MODEL.format(mark=mark))
            identity.code_version.cache_clear()
            importlib.reload(importlib.import_module(f"{pkg}.adapter"))
    yield Toy
    identity.code_version.cache_clear()


def run(tmp_path, tasks_="echo", **kw):
    cfg = RunConfig(model="toy", tasks=tasks_.split(","), output_path=str(tmp_path / "out"), log_samples=True,
                    **kw)
    return Runner(cfg).run()


def samples(out, task="echo"):
    return [json.loads(line) for line in open(f"{out['output_dir']}/samples_{task}.jsonl")]


def test_changed_task_argument_recomputes_and_the_new_answers_are_scored(tmp_path, toy):
    first = run(tmp_path, task_args={"suffix": "?"})
    assert toy.module().CALLS == ["0", "1", "2", "3", "4"]
    toy.module().CALLS.clear()
    second = run(tmp_path, task_args={"suffix": "!"}, resume=True)
    assert toy.module().CALLS == ["0", "1", "2", "3", "4"]
    assert all(s["output"].endswith("!") for s in samples(second))
    assert second["timing"]["echo"]["recomputed"] == {
        "request changed (prompt, image, generation settings or seed)": 5}
    assert first["config_hash"] == second["config_hash"]


def test_changed_prompt_in_task_code_recomputes_only_the_changed_samples(tmp_path, toy, monkeypatch):
    run(tmp_path)
    toy.module().CALLS.clear()
    mod = importlib.import_module(f"{toy.package}.echo_task")
    original = mod.Echo.build_request

    def build_request(self, doc):  # the prompt changes for two of the five questions
        req = original(self, doc)
        if doc.doc_id in ("1", "3"):
            req.prompt = "Q: " + req.prompt
        return req
    monkeypatch.setattr(mod.Echo, "build_request", build_request)
    out = run(tmp_path, resume=True)
    assert toy.module().CALLS == ["1", "3"]
    assert [s["output"].startswith("v1|Q: ") for s in samples(out)] == [False, True, False, True, False]


def test_changed_model_source_recomputes_every_sample_and_says_why(tmp_path, toy, caplog):
    run(tmp_path)
    toy.edit_model("v2")  # a one-word edit of the model family's source
    toy.module().CALLS.clear()
    with caplog.at_level(logging.INFO, logger="omnibench"):
        out = run(tmp_path, resume=True)
    assert toy.module().CALLS == ["0", "1", "2", "3", "4"]
    assert all(s["output"].startswith("v2|") for s in samples(out))
    assert "5 model code or library version changed" in caplog.text


def test_unchanged_rerun_with_resume_reuses_everything(tmp_path, toy):
    a = run(tmp_path)
    toy.module().CALLS.clear()
    b = run(tmp_path, resume=True)
    assert toy.module().CALLS == [] and a["results"] == b["results"]
    assert b["timing"]["echo"]["cached"] == 5


def test_changed_dataset_row_recomputes_only_that_row(tmp_path):
    from omnibench.tasks.pope import sample_rows

    def write(rows):
        folder = tmp_path / "pope" / "data"
        folder.mkdir(parents=True, exist_ok=True)
        feats = datasets.Features({k: datasets.Image() if k == "image" else datasets.Value("string") for k in rows[0]})
        datasets.Dataset.from_list(rows, features=feats).to_parquet(str(folder / "test-00000-of-00001.parquet"))

    class Echo(ModelAdapter):
        def __init__(self):
            super().__init__()
            self.seen = []

        def generate_text(self, requests):
            self.seen += [r.sample_id for r in requests]
            return [r.prompt for r in requests]

    rows = sample_rows()
    write(rows)
    cfg = dict(model="hf", tasks=["pope"], task_args={"data_dir": str(tmp_path / "pope")},
               output_path=str(tmp_path / "out"))
    Runner(RunConfig(**cfg), Echo).run()
    rows[4]["question"] = "Is there a triangle in the image?"
    shutil.rmtree(tmp_path / "pope")
    write(rows)
    model = Echo()
    out = Runner(RunConfig(**cfg, resume=True), lambda: model).run()
    assert model.seen == [f"{rows[4]['category']}/{rows[4]['question_id']}"]
    assert out["timing"]["pope"]["cached"] == 5


def test_typo_in_a_model_argument_fails_naming_the_known_ones(tmp_path, toy):
    with pytest.raises(OmnibenchError, match=r"unknown --model_args key 'colur' for model toy: did you mean "
                                             r"'colour'\? known: colour"):
        run(tmp_path, model_args={"colur": "5"})
    with pytest.raises(OmnibenchError, match=r"model toy: colour='red' is not an integer"):
        run(tmp_path, model_args={"colour": "red"})
    assert not (tmp_path / "out").exists()


def test_a_default_filled_in_is_the_same_run_as_the_value_given(tmp_path, toy):
    a = run(tmp_path)
    b = run(tmp_path, model_args={"colour": "10"}, resume=True)
    assert a["config_hash"] == b["config_hash"]
    c = run(tmp_path, model_args={"colour": "11"})
    assert c["config_hash"] != a["config_hash"]


def test_folder_copied_from_another_config_is_refused_naming_what_differs(tmp_path, toy):
    a = run(tmp_path, model_args={"colour": "1"})
    b = run(tmp_path, model_args={"colour": "2"})
    folder_a, folder_b = tmp_path / "out" / f"toy_{a['config_hash']}", tmp_path / "out" / f"toy_{b['config_hash']}"
    shutil.rmtree(folder_b)
    shutil.copytree(folder_a, folder_b)
    with pytest.raises(OmnibenchError, match=r"holds a run of another configuration \(differs in: "
                                             r"model_config.colour: 1 -> 2\)"):
        run(tmp_path, model_args={"colour": "2"}, resume=True)


def test_cache_file_copied_from_another_config_is_refused(tmp_path, toy):
    a = run(tmp_path, model_args={"colour": "1"})
    b = run(tmp_path, model_args={"colour": "2"})
    src = tmp_path / "out" / f"toy_{a['config_hash']}" / "cache" / "echo.rank0.jsonl"
    dst = tmp_path / "out" / f"toy_{b['config_hash']}" / "cache" / "echo.rank0.jsonl"
    before = src.read_bytes()
    shutil.copy(src, dst)
    with pytest.raises(OmnibenchError, match=r"foreign cache line .*echo.rank0.jsonl:1: a sample of config "
                                             f"{a['config_hash']}"):
        run(tmp_path, model_args={"colour": "2"}, resume=True)
    assert src.read_bytes() == before


def test_corrupt_cache_line_is_refused_but_a_torn_one_is_skipped(tmp_path, toy):
    out = run(tmp_path)
    cache = tmp_path / "out" / f"toy_{out['config_hash']}" / "cache" / "echo.rank0.jsonl"
    lines = cache.read_text().splitlines(keepends=True)
    cache.write_text("".join(lines[:4]) + lines[4][:40])  # killed mid-write: a torn tail
    toy.module().CALLS.clear()
    run(tmp_path, resume=True)
    assert toy.module().CALLS == ["4"]
    cache.write_text(cache.read_text() + '{"sample_id": 3}\n')
    with pytest.raises(OmnibenchError, match=r"corrupt cache line .*echo.rank0.jsonl:\d+: not a sample record"):
        run(tmp_path, resume=True)


def test_overwrite_regenerates_images_and_resume_checks_each_image(tmp_path, toy):
    args = {"sample": "true", "num_prompts": "4"}
    first = run(tmp_path, "coco_fid30k", task_args=args, model_args={"colour": "200"})
    folder = tmp_path / "out" / f"toy_{first['config_hash']}"
    images = sorted((folder / "images" / "coco_fid30k").glob("*.png"))
    assert len(images) == 4 and all(Image.open(p).getpixel((0, 0))[0] == 200 for p in images)
    # The same config after the model's code changed: --overwrite must not reuse a single image.
    toy.edit_model("v2")
    toy.module().CALLS.clear()
    run(tmp_path, "coco_fid30k", task_args=args, model_args={"colour": "200"}, overwrite=True)
    assert len(toy.module().CALLS) == 4
    assert all(Image.open(p).getpixel((0, 0))[2] == 99 for p in images)
    # One image replaced on disk behind the cache's back: a resumed run redraws exactly that one.
    Image.new("RGB", (8, 8), (1, 2, 3)).save(images[2])
    toy.module().CALLS.clear()
    run(tmp_path, "coco_fid30k", task_args=args, model_args={"colour": "200"}, resume=True)
    assert toy.module().CALLS == [images[2].stem]
    assert Image.open(images[2]).getpixel((0, 0))[0] == 200


def test_overwrite_keeps_the_old_run_when_the_new_model_cannot_load(tmp_path, toy, monkeypatch):
    out = run(tmp_path)
    folder = tmp_path / "out" / f"toy_{out['config_hash']}"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def broken(self, *a, **k):
        raise OmnibenchError("cannot load checkpoint 'x'")
    monkeypatch.setattr(toy.module().Toy, "__init__", broken)
    with pytest.raises(OmnibenchError, match="cannot load checkpoint"):
        run(tmp_path, overwrite=True)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_limit_on_a_finished_run_never_replaces_its_results(tmp_path, toy, caplog):
    full = run(tmp_path)
    folder = tmp_path / "out" / f"toy_{full['config_hash']}"
    before = (folder / "results.json").read_bytes()
    with caplog.at_level(logging.WARNING, logger="omnibench"):
        part = run(tmp_path, resume=True, limit=1)
    assert (folder / "results.json").read_bytes() == before
    assert "results.json kept: it scored more samples (echo: 5 > 1)" in caplog.text
    partial = json.loads(open(f"{part['output_dir']}/results.json").read())
    assert partial["n_samples"]["echo"] == {"total": 1, "failed": 0, "available": 5}
    assert any(w.startswith("--limit 1: echo scored 1 of 5 samples") for w in partial["warnings"])
    assert len(list((folder / "history").glob("results_*.json"))) == 2


def test_misspelled_task_argument_and_task_prefix_fail_before_any_work(tmp_path, capsys):
    for argv, message in [
        (["--task_args", "sample=true,smaple=true"], "unknown --task_args key 'smaple': no task of pope takes it"),
        (["--task_args", "sample=true,mmmu.subjects=Art"], "--task_args mmmu.subjects: task 'mmmu' is not in --tasks"),
        (["--task_args", "sample=true,pope.splt=test"], "unknown --task_args key 'splt' for task pope: did you mean 'split'?"),
        (["--model_args", "preset=tiny,mdoe=as_published"], "unknown --model_args key 'mdoe' for model hf"),
    ]:
        base = ["--model", "hf", "--model_args", "preset=tiny", "--tasks", "pope", "--device", "cpu",
                "--output_path", str(tmp_path)]
        code = main(base + argv)
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("model", ["hf", "omnimamba", "showo", "janusflow"])
def test_every_model_refuses_a_misspelled_argument(model, tmp_path, capsys):
    code = main(["--model", model, "--model_args", "preset=tiny,guidence_scale=0", "--tasks", "pope",
                 "--task_args", "sample=true", "--device", "cpu", "--output_path", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"unknown --model_args key 'guidence_scale' for model {model}" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("task", ["pope", "mme", "vqav2", "gqa", "mmmu", "coco_fid30k"])
def test_every_task_refuses_a_misspelled_argument(task, tmp_path, capsys):
    code = main(["--model", "hf", "--model_args", "preset=tiny", "--tasks", task, "--task_args",
                 f"sample=true,{task}.smaple=1", "--device", "cpu", "--output_path", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"unknown --task_args key 'smaple' for task {task}: did you mean 'sample'?" in err


def test_declared_arguments_are_printed_and_tasks_list_needs_no_model(capsys):
    assert main(["--tasks", "list"]) == 0
    assert "omnimamba" in capsys.readouterr().out
    assert main(["--model", "showo", "--model_args", "help", "--tasks", "pope"]) == 0
    out = capsys.readouterr().out
    assert "pretrained: str (default showlab/show-o-512x512)" in out and "mode: str {best, as_published} (default best)" in out
    assert main(["--tasks", "pope,mmmu", "--task_args", "help"]) == 0
    out = capsys.readouterr().out
    assert "--task_args of task mmmu:" in out and "subjects: str" in out and "sample: bool (default False)" in out


def test_resolved_config_is_the_run_identity_and_config_reports_it():
    from omnibench.models.omnimamba import OmniMambaAdapter
    cfg = OmniMambaAdapter.resolved_config("auto", {"preset": "tiny"})
    assert cfg["mode"] == "best" and cfg["cfg_scale"] == 1.0 and cfg["top_k"] == 1
    assert cfg == OmniMambaAdapter.resolved_config("auto", {"preset": "tiny", "mode": "best", "top_k": "1"})


def test_code_version_follows_imports_within_the_project_only(tmp_path, toy):
    before = identity.code_version(f"{toy.package}.adapter")
    (toy.folder / "unrelated.py").write_text("X = 1\n")  # not imported by the adapter
    identity.code_version.cache_clear()
    assert identity.code_version(f"{toy.package}.adapter") == before
    (toy.folder / "__init__.py").write_text("# the package's own init runs first\n")
    identity.code_version.cache_clear()
    assert identity.code_version(f"{toy.package}.adapter") != before
    # A family's version covers its own modules, not the engine's, a library's or another family's.
    files = identity.source_files("omnibench.models.omnimamba.adapter")
    assert {"omnibench.models.omnimamba", "omnibench.models.omnimamba.adapter",
            "omnibench.models.omnimamba.modeling_omnimamba", "omnibench.models.omnimamba.ssd",
            "omnibench.models.common.decode"} <= set(files)
    assert all(name.startswith("omnibench.models.") or name == "omnibench.models" for name in files)
    assert not any(name.startswith("omnibench.models.showo") for name in files)


def test_request_fingerprint_sees_pixels_prompt_settings_and_seed():
    from omnibench.protocol import Request
    img = Image.new("RGB", (4, 4), (1, 2, 3))
    base = identity.request_fingerprint(Request("a", "q", [img], {"max_new_tokens": 4}, seed=1))
    other = img.copy()
    other.putpixel((3, 3), (1, 2, 4))
    assert identity.request_fingerprint(Request("a", "q", [other], {"max_new_tokens": 4}, seed=1)) != base
    assert identity.request_fingerprint(Request("a", "q ", [img], {"max_new_tokens": 4}, seed=1)) != base
    assert identity.request_fingerprint(Request("a", "q", [img], {"max_new_tokens": 5}, seed=1)) != base
    assert identity.request_fingerprint(Request("a", "q", [img], {"max_new_tokens": 4}, seed=2)) != base
    assert identity.request_fingerprint(Request("b", "q", [img.copy()], {"max_new_tokens": 4}, seed=1)) == base


def test_readme_argument_tables_are_the_declarations():
    from pathlib import Path

    from omnibench.args import README_END, README_START, readme_section
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    current = text[text.index(README_START):text.index(README_END) + len(README_END)]
    assert current == readme_section(), "README is stale: run python -m omnibench.args"


def test_tasks_declare_metric_directions_and_compare_reads_them(tmp_path):
    from omnibench import compare as compare_mod
    from omnibench.tasks.coco_fid import CocoFid
    from omnibench.tasks.pope import Pope

    assert Pope.direction(Pope, "pope_yes_ratio") == "neutral" and Pope.direction(Pope, "pope_f1") == "higher"
    assert CocoFid.direction(CocoFid, "fid") == "lower" and CocoFid.direction(CocoFid, "fid_images") == "neutral"
    # A task that declares its score lower-is-better under a name no pattern knows: the declaration rules.
    base = {"results": {"t": {"error_rate": 0.10}}, "headline": {"t": {"metric": "error_rate"}},
            "directions": {"t": {"error_rate": "lower"}}}
    worse = {"results": {"t": {"error_rate": 0.20}}, "headline": base["headline"], "directions": base["directions"]}
    better = {"results": {"t": {"error_rate": 0.05}}, "headline": base["headline"], "directions": base["directions"]}
    assert compare_mod.compare(base, worse, 0.01)[1] is True
    assert compare_mod.compare(base, better, 0.01)[1] is False


def test_new_weights_behind_the_same_local_path_are_a_new_run(tmp_path, toy, monkeypatch):
    from omnibench.args import Arg

    mod = toy.module()
    monkeypatch.setattr(mod.Toy, "ARGS", mod.Toy.ARGS + (Arg("pretrained", str, None, "a checkpoint"),))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "weights.bin").write_bytes(b"\x00" * 64)
    first = run(tmp_path, model_args={"pretrained": str(ckpt)})
    again = run(tmp_path, model_args={"pretrained": str(ckpt)}, resume=True)
    assert again["config_hash"] == first["config_hash"] and mod.CALLS == ["0", "1", "2", "3", "4"]
    (ckpt / "weights.bin").write_bytes(b"\x01" * 64)  # same size, same path, other weights
    mod.CALLS.clear()
    other = run(tmp_path, model_args={"pretrained": str(ckpt)}, resume=True)
    assert other["config_hash"] != first["config_hash"] and mod.CALLS == ["0", "1", "2", "3", "4"]
    assert other["manifest"]["identity"]["model_config"]["local_file_digests"]["pretrained"] != \
        first["manifest"]["identity"]["model_config"]["local_file_digests"]["pretrained"]


def test_the_device_kind_is_part_of_the_run_identity(tmp_path, toy):
    """`--dtype auto` is bf16 on CUDA and fp32 on CPU for some models: a CPU run resumed on a GPU must not
    mix the two sets of answers."""
    cpu = Runner(RunConfig(model="toy", tasks=["echo"], output_path=str(tmp_path), device="cpu"))
    gpu = Runner(RunConfig(model="toy", tasks=["echo"], output_path=str(tmp_path), device="cuda"))
    gpu1 = Runner(RunConfig(model="toy", tasks=["echo"], output_path=str(tmp_path), device="cuda:1"))
    assert cpu.chash != gpu.chash and gpu.chash == gpu1.chash
    assert cpu.model_config["device_type"] == "cpu" and gpu.model_config["device_type"] == "cuda"
