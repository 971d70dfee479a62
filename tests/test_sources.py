"""Every published layout of every benchmark, built here in its real schema (columns, dtypes, configs,
split names, images encoded as the hub stores them), loads through `datasets` from a local copy (a
snapshot_download folder or save_to_disk copies) and from a hub id, and scores end to end on a tiny
model; the fingerprint names the layout read. The hub itself is replaced only at the network boundary."""
import json
import random
from pathlib import Path

import datasets
import pytest

from omnibench import data, registry
from omnibench.config import RunConfig
from omnibench.protocol import OmnibenchError
from omnibench.runner import Runner
from omnibench.tasks import coco_fid, gqa, mme, mmmu, pope, vqav2


def hub_repo(root: Path, configs: dict[str, dict[str, list[dict]]], features, shards: int = 1) -> Path:
    """A dataset repository as the hub stores it: `data/` (default config) or `<config>/` folders of
    `<split>-0000i-of-0000n.parquet` shards, and the README's YAML `configs:` block naming them."""
    readme = ["---", "configs:"]
    for config, splits in configs.items():
        folder = "data" if config == "default" else config
        (root / folder).mkdir(parents=True)
        readme += [f"- config_name: {config}", "  data_files:"]
        for split, rows in splits.items():
            feats = features if isinstance(features, datasets.Features) else features[config]
            n = min(shards, len(rows))
            for i in range(n):
                part = datasets.Dataset.from_list(rows[i::n], features=feats)
                part.to_parquet(str(root / folder / f"{split}-{i:05d}-of-{n:05d}.parquet"))
            readme += [f"  - split: {split}", f"    path: {folder}/{split}-*"]
    (root / "README.md").write_text("\n".join(readme + ["---", ""]))
    return root


def saved_to_disk(repo: Path, root: Path, configs: list[str], tree: bool) -> Path:
    """What `load_dataset(repo, config).save_to_disk(...)` leaves: one DatasetDict folder, or one per config."""
    for config in configs:
        datasets.load_dataset(str(repo), config).save_to_disk(str(root / config if tree else root))
    return root


# ----------------------------------------------------------------------------- the layouts

POPE_ROWS = pope.sample_rows()
MMMU_ROWS = {(s, split): mmmu.sample_rows(s, split) for s in mmmu.SAMPLE_SUBJECTS for split in mmmu.SPLITS}


def pope_hub(root):
    full = {split: [r for r in POPE_ROWS if r["category"] == split] for split in pope.SPLITS}
    return hub_repo(root, {"default": {"test": POPE_ROWS}, "Full": full}, data.features_from(pope.FEATURES), shards=2)


def mme_hub(root):
    return hub_repo(root, {"default": {"test": mme.sample_rows()}}, data.features_from(mme.FEATURES))


def vqav2_hub(root):
    rows = {"validation": vqav2.sample_rows(), "testdev": vqav2.sample_rows(with_answers=False),
            "test": vqav2.sample_rows(with_answers=False)}
    return hub_repo(root, {"default": rows}, data.features_from(vqav2.sample_features()))


def gqa_hub(root):
    instructions, images = gqa.sample_rows()
    specs = [data.features_from(f) for f in gqa.sample_features()]
    return hub_repo(root, {gqa.INSTRUCTIONS_CONFIG: {"testdev": instructions}, gqa.IMAGES_CONFIG: {"testdev": images}},
                    dict(zip((gqa.INSTRUCTIONS_CONFIG, gqa.IMAGES_CONFIG), specs)))


def mmmu_per_subject(root):  # MMMU/MMMU
    return hub_repo(root, {s: {split: MMMU_ROWS[s, split] for split in mmmu.SPLITS} for s in mmmu.SAMPLE_SUBJECTS},
                    mmmu._features())


def mmmu_one_config(root):  # lmms-lab/MMMU: every subject in one config, not in the official order
    rows = {split: [r for s in reversed(mmmu.SAMPLE_SUBJECTS) for r in MMMU_ROWS[s, split]] for split in mmmu.SPLITS}
    random.Random(0).shuffle(rows["validation"])
    return hub_repo(root, {"default": rows}, mmmu._features())


def coco_hub(root):
    rows = [{"question_id": f"COCO_val2014_{100 + k:012d}.jpg", "answer": [f"caption {k} {j}" for j in range(5)],
             "image": {"bytes": data.png_bytes(data.drawn_image(k, size=24)), "path": None}} for k in range(4)]
    return hub_repo(root, {"default": {"val": rows}}, data.features_from({
        "question_id": "string", "answer": datasets.Sequence(datasets.Value("string")), "image": "image"}))


def disk(build, configs, tree=False):
    return lambda root: saved_to_disk(build(root / "repo"), root / "saved", configs, tree)


# (id, task, builder of the local copy, task args, rows expected, layout recorded)
CASES = [
    ("pope-default-test", "pope", pope_hub, {}, 6, "lmms-lab/POPE (default config)"),
    ("pope-full-adversarial", "pope", pope_hub, {"split": "adversarial"}, 2, "lmms-lab/POPE (Full config)"),
    ("pope-full-popular", "pope", pope_hub, {"split": "popular"}, 2, "lmms-lab/POPE (Full config)"),
    ("pope-full-random", "pope", pope_hub, {"split": "random"}, 2, "lmms-lab/POPE (Full config)"),
    ("pope-full-all", "pope", pope_hub, {"config": "Full", "split": "adversarial+popular+random"}, 6,
     "lmms-lab/POPE (Full config)"),
    ("pope-saved-full", "pope", disk(pope_hub, ["Full"]), {"split": "random"}, 2, "lmms-lab/POPE (Full config)"),
    ("pope-saved-default", "pope", disk(pope_hub, ["default"]), {}, 6, "lmms-lab/POPE (default config)"),
    ("mme-default", "mme", mme_hub, {}, 6, "lmms-lab/MME (default config)"),
    ("mme-saved", "mme", disk(mme_hub, ["default"]), {}, 6, "lmms-lab/MME (default config)"),
    ("vqav2-validation", "vqav2", vqav2_hub, {}, 4, "lmms-lab/VQAv2 (default config)"),
    ("vqav2-saved", "vqav2", disk(vqav2_hub, ["default"]), {}, 4, "lmms-lab/VQAv2 (default config)"),
    ("gqa-testdev", "gqa", gqa_hub, {}, 4, "lmms-lab/GQA (testdev_balanced_instructions config)"),
    ("gqa-saved-tree", "gqa", disk(gqa_hub, [gqa.INSTRUCTIONS_CONFIG, gqa.IMAGES_CONFIG], tree=True), {}, 4,
     "lmms-lab/GQA (testdev_balanced_instructions config)"),
    ("mmmu-per-subject", "mmmu", mmmu_per_subject, {"subjects": "Accounting+Math"}, 6, mmmu.PER_SUBJECT),
    ("mmmu-one-config", "mmmu", mmmu_one_config, {"subjects": "Accounting+Math"}, 6, mmmu.ONE_CONFIG.name),
    ("mmmu-one-config-dev", "mmmu", mmmu_one_config, {"subjects": "math", "split": "dev"}, 3, mmmu.ONE_CONFIG.name),
    ("mmmu-saved-per-subject", "mmmu", disk(mmmu_per_subject, list(mmmu.SAMPLE_SUBJECTS), tree=True),
     {"subjects": "Accounting+Math"}, 6, mmmu.PER_SUBJECT),
    ("mmmu-saved-one-config", "mmmu", disk(mmmu_one_config, ["default"]), {"subjects": "Accounting+Math"}, 6,
     mmmu.ONE_CONFIG.name),
]


@pytest.fixture(scope="module")
def tiny():
    """One tiny model for every end-to-end run here."""
    return registry.get_model_class("omnimamba")(device="cpu", dtype="auto", preset="tiny")


def evaluate(task, args, out, model):
    cfg = RunConfig(model="omnimamba", model_args={"preset": "tiny"}, tasks=[task], task_args=args,
                    gen_kwargs={"max_new_tokens": 4}, batch_size=8, output_path=str(out), log_samples=True)
    return Runner(cfg, lambda: model).run()


def samples(result, task):
    return [json.loads(line) for line in open(f"{result['output_dir']}/samples_{task}.jsonl")]


@pytest.mark.parametrize("name, task, build, args, rows, layout", CASES, ids=[c[0] for c in CASES])
def test_layout_loads_from_a_local_copy_and_scores_end_to_end(name, task, build, args, rows, layout, tmp_path, tiny):
    folder = build(tmp_path / "copy")
    for given in ({"source": str(folder)}, {"data_dir": str(folder)}):  # data_dir=: the deprecated synonym
        loaded = registry.get_task_class(task)(**given, **args)
        assert len(loaded.docs()) == rows
        prints = loaded.fingerprint()
        prints = prints.get("instructions", prints)
        assert prints["layout"] == layout and prints["source"] == str(folder) and loaded.args["source"] == str(folder)
    out = evaluate(task, {"source": str(folder), **args}, tmp_path / "out", tiny)
    assert out["n_samples"][task] == {"total": rows, "failed": 0, "available": rows}
    assert out["headline"][task]["metric"] in out["results"][task]
    recorded = out["manifest"]["datasets"][task]
    assert recorded.get("instructions", recorded)["layout"] == layout


def test_mmmu_validation_scores_the_same_from_both_layouts(tmp_path, tiny):
    per_subject = mmmu_per_subject(tmp_path / "MMMU")
    one_config = mmmu_one_config(tmp_path / "lmms-lab-MMMU")
    a = evaluate("mmmu", {"source": str(per_subject), "subjects": "Accounting+Math"}, tmp_path / "a", tiny)
    b = evaluate("mmmu", {"source": str(one_config), "subjects": "Accounting+Math"}, tmp_path / "b", tiny)
    assert [s["sample_id"] for s in samples(a, "mmmu")] == [s["sample_id"] for s in samples(b, "mmmu")]
    assert [s["output"] for s in samples(a, "mmmu")] == [s["output"] for s in samples(b, "mmmu")]
    assert a["results"]["mmmu"] == b["results"]["mmmu"]
    assert a["manifest"]["datasets"]["mmmu"]["layout"] != b["manifest"]["datasets"]["mmmu"]["layout"]
    assert a["manifest"]["datasets"]["mmmu"]["num_rows"] == b["manifest"]["datasets"]["mmmu"]["num_rows"] == 6


def test_vqav2_test_splits_load_without_answers(tmp_path):
    folder = vqav2_hub(tmp_path / "VQAv2")
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps({"questions": [{"question_id": r["question_id"]} for r in vqav2.sample_rows()]}))
    for split in vqav2.TEST_SPLITS:
        task = vqav2.VQAv2(source=str(folder), split=split, test_questions=str(questions))
        assert len(task.docs()) == 4 and task.fingerprint()["split"] == split


def test_coco_captions_load_from_the_hub_layout_and_a_saved_copy(tmp_path):
    repo = coco_hub(tmp_path / "COCO-Caption")
    for folder in (repo, saved_to_disk(repo, tmp_path / "saved", ["default"], tree=False)):
        task = coco_fid.CocoFid(source=str(folder), num_prompts="3")
        assert len(task.docs()) == 3 and len(task.coco.captions) == 4
        assert task.fingerprint()["layout"] == "lmms-lab/COCO-Caption (default config)"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The hub at the network boundary: `datasets`' hub calls for the ids in `served` read a local copy
    in the repository's layout instead, and the revision asked for is noted."""
    served, asked = {}, []

    def redirect(fn):
        def call(path, *args, revision=None, **kwargs):
            if path in served:
                asked.append((path, revision))
                path = str(served[path])
            return fn(path, *args, **kwargs)
        return call
    for name in ("load_dataset", "get_dataset_config_names", "get_dataset_split_names"):
        monkeypatch.setattr(datasets, name, redirect(getattr(datasets, name)))
    return served, asked


def test_hub_ids_are_read_at_their_pinned_revision_mirrors_included(hub, tmp_path):
    served, asked = hub
    served["lmms-lab/POPE"] = served["lmms-lab-encoder/POPE"] = pope_hub(tmp_path / "POPE")
    served["MMMU/MMMU"] = mmmu_per_subject(tmp_path / "MMMU")
    default = pope.Pope(split="adversarial")
    assert default.fingerprint()["source"] == "lmms-lab/POPE" and default.args["source"] == "lmms-lab/POPE"
    mirror = pope.Pope(source="lmms-lab-encoder/POPE", split="random")
    assert mirror.fingerprint()["layout"] == "lmms-lab/POPE (Full config)" and len(mirror.docs()) == 2
    assert {revision for _, revision in asked} == {pope.SOURCES[0].revision}
    asked.clear()
    assert len(mmmu.MMMU(subjects="Accounting").docs()) == 3  # MMMU/MMMU: not pinned, read at main
    assert {revision for _, revision in asked} == {None}


@pytest.mark.parametrize("args, message", [
    ({"source": "/nonexistent/POPE"}, "dataset folder not found: /nonexistent/POPE"),
    ({"source": "lmms-lab-encoder/NOPE"}, "cannot load dataset lmms-lab-encoder/NOPE@main from the hub (listing its configs)"),
    ({"sample": "true", "config": "Nope"}, "holds no config Nope, split test in a layout omnibench knows (it holds "
                                           "configs default, Full"),
    ({"sample": "true", "split": "train"}, "task pope: unknown split 'train'"),
    ({"source": "/a", "data_dir": "/b"}, "source=/a and data_dir=/b name two sources"),
])
def test_a_wrong_source_fails_in_one_line_naming_what_was_tried(args, message, monkeypatch):
    import huggingface_hub

    # Offline as this machine is, without the retries of a library imported before conftest said so.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OmnibenchError) as err:
        pope.Pope(**args)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_copy_of_another_benchmark_is_refused_by_its_columns(tmp_path):
    folder = vqav2_hub(tmp_path / "VQAv2")  # a default config with a test split, as POPE's
    with pytest.raises(OmnibenchError, match=r"split test has no column answer .* it is not lmms-lab/POPE \(default "):
        pope.Pope(source=str(folder))


def test_lmms_eval_names_run_from_the_command_line(tmp_path, capsys):
    from omnibench.cli import main

    code = main(["--model", "omnimamba", "--model_args", "preset=tiny", "--tasks", "mmmu_val,pope_full",
                 "--task_args", "sample=true", "--gen_kwargs", "max_new_tokens=8", "--verbosity", "INFO",
                 "--device", "cpu", "--output_path", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    results = json.loads(next(tmp_path.glob("omnimamba_*/results.json")).read_text())
    assert results["manifest"]["datasets"]["pope"]["layout"] == "lmms-lab/POPE (Full config)"
    assert results["manifest"]["datasets"]["pope"]["split"] == "adversarial+popular+random"
    assert {"pope_adversarial_f1", "pope_popular_f1", "pope_random_f1", "pope_f1"} <= set(results["results"]["pope"])
    assert results["manifest"]["datasets"]["mmmu"]["split"] == "validation"
