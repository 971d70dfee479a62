"""`python -m omnibench.data download`: each task's default repository fetched with
`huggingface_hub.snapshot_download` (replaced here, at the network boundary, by one that writes the
repository's real layout), and the printed `--task_args` line reads the copies offline."""
import huggingface_hub
import pytest

from omnibench import data, registry
from omnibench.config import task_args_for
from tests.test_sources import coco_hub, gqa_hub, mme_hub, mmmu_per_subject, pope_hub, vqav2_hub

REPOSITORIES = {"lmms-lab/POPE": pope_hub, "lmms-lab-encoder/POPE": pope_hub, "lmms-lab/MME": mme_hub,
                "lmms-lab/GQA": gqa_hub, "MMMU/MMMU": mmmu_per_subject, "lmms-lab/VQAv2": vqav2_hub,
                "lmms-lab/COCO-Caption": coco_hub}


@pytest.fixture
def hub(monkeypatch):
    calls = []

    def snapshot_download(repo_id, *, repo_type=None, revision=None, local_dir=None, allow_patterns=None, **_):
        calls.append({"repo_id": repo_id, "repo_type": repo_type, "revision": revision, "allow_patterns": allow_patterns})
        from pathlib import Path
        return str(REPOSITORIES[repo_id](Path(local_dir)))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_download_fetches_each_default_source_and_prints_the_line_that_reads_it(hub, tmp_path, capsys):
    code = data.main(["download", "pope_full,mme,gqa,mmmu_val,vqav2,coco_fid30k", "--to", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    line = out.strip().splitlines()[-1].strip()
    assert line == "--task_args " + ",".join(f"{task}.source={tmp_path / folder}" for task, folder in (
        ("pope", "POPE"), ("mme", "MME"), ("gqa", "GQA"), ("mmmu", "MMMU"), ("vqav2", "VQAv2"),
        ("coco_fid30k", "COCO-Caption")))
    assert {c["repo_type"] for c in hub} == {"dataset"}
    assert hub[0]["revision"] == "4db1276663dfa5eb8ad16a52d24c31a09e470896"  # pinned
    assert next(c for c in hub if c["repo_id"] == "MMMU/MMMU")["revision"] is None  # main
    vqa = next(c for c in hub if c["repo_id"] == "lmms-lab/VQAv2")["allow_patterns"]
    assert "data/validation-*" in vqa and not any("train" in p for p in vqa)  # no 45 GB train split
    # The printed line, as run_eval.py would parse it, reads every copy.
    args = dict(part.split("=", 1) for part in line.split(" ", 1)[1].split(","))
    tasks = ["pope", "mme", "gqa", "mmmu", "vqav2", "coco_fid30k"]
    extra = {"pope": {"split": "adversarial+popular+random"}, "mmmu": {"subjects": "Accounting+Math"},
             "coco_fid30k": {"num_prompts": "2"}}
    for task, task_args in task_args_for(tasks, args).items():
        loaded = registry.get_task_class(task)(**task_args, **extra.get(task, {}))
        prints = loaded.fingerprint()
        assert len(loaded.docs()) > 0 and prints.get("instructions", prints)["source"].startswith(str(tmp_path))


def test_another_repository_is_named_as_task_equals_hub_id(hub, tmp_path, capsys):
    assert data.main(["download", "pope=lmms-lab-encoder/POPE", "--to", str(tmp_path)]) == 0
    assert hub[0]["repo_id"] == "lmms-lab-encoder/POPE"
    assert capsys.readouterr().out.strip().endswith(f"pope.source={tmp_path / 'POPE'}")


def test_offline_the_download_fails_in_one_line(monkeypatch, tmp_path, capsys):
    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError(
            "An error happened while trying to locate the files on the Hub and we cannot find the appropriate"
            " snapshot folder for the specified revision on the local disk.\nPlease check your internet connection.")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert data.main(["download", "mme", "--to", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot download lmms-lab/MME@d6c9023f017b564f7b3ccccf53481"
                                                   f"66bce8fdbcd into {tmp_path / 'MME'}: An error happened")
    assert "no internet here? run this on a machine that has it" in err


@pytest.mark.parametrize("argv, message", [
    (["download", "nosuch", "--to", "/tmp/x"], "unknown task 'nosuch'"),
    (["download", "pope"], "the following arguments are required: --to"),
])
def test_bad_download_commands_are_one_line(argv, message, capsys):
    assert data.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
