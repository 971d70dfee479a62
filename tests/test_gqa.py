"""GQA: official exact-match accuracy over balanced questions, LLaVA's prediction preparation, and the
two-config task end to end on the built-in sample."""
import json

import pytest
from PIL import Image

from omnibench import data
from omnibench.protocol import Doc, OmnibenchError
from omnibench.tasks.common import SHORT_ANSWER as PROMPT_SUFFIX
from omnibench.tasks.gqa import GQA, gqa_scores, normalize_prediction, predictions_file


@pytest.fixture(autouse=True)
def sample_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIBENCH_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("raw, expected", [
    ("Yes.", "yes"),
    ("  Left \n", "left"),
    ("yes...", "yes"),
    ("St. Louis", "st. louis"),         # only trailing periods go
    ("No, it is not.", "no, it is not"),  # no answer extraction: a sentence stays a sentence
])
def test_prediction_preparation(raw, expected):
    assert normalize_prediction(raw) == expected


def _rec(pred, answer, structural="query", semantic="obj", balanced=True):
    return {"prediction": pred, "answer": answer, "structural": structural, "semantic": semantic,
            "is_balanced": balanced}


def test_accuracy_is_exact_string_match():
    # "t shirt" vs gold "t-shirt" and "yes " vs "yes" are wrong: the official eval compares strings.
    records = [_rec("t-shirt", "t-shirt"), _rec("t shirt", "t-shirt"), _rec("yes ", "yes", "verify")]
    assert gqa_scores(records)["gqa_accuracy"] == pytest.approx(1 / 3)


def test_hand_worked_scores_over_balanced_questions():
    records = [
        _rec("yes", "yes", "verify", "obj"),      # binary, right
        _rec("no", "yes", "logical", "obj"),      # binary, wrong
        _rec("red", "red", "query", "attr"),      # open, right
        _rec("left", "right", "query", "rel"),    # open, wrong
        _rec("cup", "cup", "choose", "rel"),      # binary, right
        _rec("dog", "cat", "query", "cat", balanced=False),  # not counted anywhere
    ]
    s = gqa_scores(records)
    assert s["gqa_accuracy"] == pytest.approx(3 / 5)
    assert s["gqa_binary_accuracy"] == pytest.approx(2 / 3)
    assert s["gqa_open_accuracy"] == pytest.approx(1 / 2)
    assert s["gqa_structural_query_accuracy"] == pytest.approx(1 / 2)
    assert s["gqa_structural_verify_accuracy"] == 1.0
    assert s["gqa_semantic_rel_accuracy"] == pytest.approx(1 / 2)
    assert "gqa_semantic_cat_accuracy" not in s


def test_predictions_file_is_official_format():
    out = predictions_file([{"question_id": "201307251", "prediction": "yes"}])
    assert out == [{"questionId": "201307251", "prediction": "yes"}]


def test_sample_loads_joins_images_and_scores(tmp_path):
    task = GQA(sample="true")
    assert (task.name, task.paper_column, task.paper_metric) == ("gqa", "GQA", "gqa_accuracy")
    docs = task.docs()
    assert len(docs) == 4 and docs[0].doc_id == docs[0].row["id"]
    # Questions 0,1 are on image n500 (drawn from seed 200), 2,3 on n501 (seed 201).
    for doc, seed, shape in zip(docs, [200, 200, 201, 201], ["circle", "circle", "square", "square"]):
        req = task.build_request(doc)
        assert req.prompt == doc.row["question"] + PROMPT_SUFFIX
        assert len(req.images) == 1 and isinstance(req.images[0], Image.Image)
        assert req.images[0].tobytes() == data.drawn_image(seed, shape=shape).tobytes()
    fp = task.fingerprint()
    assert fp["instructions"]["num_rows"] == 4 and fp["images"]["num_rows"] == 2

    outputs = ["Yes.", "Circle", "round", None]  # right, right, wrong, failed
    records = [task.process(d, o) for d, o in zip(docs, outputs)]
    assert records[3]["prediction"] == ""
    scores = task.aggregate(records)
    assert scores["gqa_accuracy"] == pytest.approx(0.5)
    assert scores["gqa_open_accuracy"] == 1.0
    assert scores["gqa_binary_accuracy"] == pytest.approx(1 / 3)

    (path,) = task.export(records, tmp_path / "out")
    assert path.name == "testdev_balanced_predictions.json"
    written = json.loads(path.read_text())
    assert written == [{"questionId": d.row["id"], "prediction": p}
                       for d, p in zip(docs, ["yes", "circle", "round", ""])]
    assert all(isinstance(w["questionId"], str) for w in written)


def test_question_whose_image_is_missing_fails_alone():
    task = GQA(sample="true")
    row = dict(task.docs()[0].row, imageId="n999")
    with pytest.raises(OmnibenchError, match="n999"):
        task.build_request(Doc(row["id"], row))


def test_unknown_split_is_refused():
    with pytest.raises(OmnibenchError, match="split"):
        GQA(sample="true", split="val")


@pytest.mark.parametrize("split", ["test", "challenge"])
def test_test_splits_are_not_scored_and_export_every_question(split, tmp_path):
    task = GQA(sample="true", split=split)
    docs = task.docs()
    assert len(docs) == 4 and "answer" not in docs[0].row and task.configs == (f"{split}_balanced_instructions",
                                                                                  f"{split}_balanced_images")
    assert task.build_request(docs[0]).images
    records = [task.process(d, o) for d, o in zip(docs, ["Yes.", "Circle", "round", None])]
    assert task.aggregate(records) == {} and task.paired_parts([(d.doc_id, r) for d, r in zip(docs, records)]) is None
    (path,) = task.export(records, tmp_path)
    assert path.name == f"{split}_balanced_predictions.json"
    assert json.loads(path.read_text()) == [{"questionId": d.doc_id, "prediction": p}
                                            for d, p in zip(docs, ["yes", "circle", "round", ""])]
    assert task.export(records[:3], tmp_path / "limited") == []


def test_local_snapshot_in_hub_layout_loads_both_configs(tmp_path):
    """`data_dir=` a copy of lmms-lab/GQA: one folder per config, declared in the README's YAML."""
    import datasets

    from omnibench.tasks.gqa import IMAGES_CONFIG, INSTRUCTIONS_CONFIG, sample_features, sample_rows

    rows, images = sample_rows()
    specs = sample_features()
    readme = ["---", "configs:"]
    for config, config_rows, spec in zip((INSTRUCTIONS_CONFIG, IMAGES_CONFIG), (rows, images), specs):
        target = tmp_path / config / "testdev-00000-of-00001.parquet"
        target.parent.mkdir()
        datasets.Dataset.from_list(config_rows, features=data.features_from(spec)).to_parquet(str(target))
        readme += [f"- config_name: {config}", "  data_files:", "  - split: testdev",
                   f"    path: {config}/testdev-*"]
    (tmp_path / "README.md").write_text("\n".join(readme + ["---", ""]))
    task = GQA(data_dir=str(tmp_path))
    docs = task.docs()
    assert len(docs) == 4 and task.build_request(docs[2]).images[0].size == (64, 64)
    assert task.fingerprint()["images"]["source"] == str(tmp_path)
