"""Checkpoint loading in every model family: weights only through safetensors or torch.load
(weights_only=True), so a pickle payload is refused without running; and every bad checkpoint (missing,
incomplete, truncated, unsafe) is one OmnibenchError line that names the path or hub id tried."""
import shutil
from pathlib import Path

import pytest
import torch

from omnibench.models.common.checkpoint_io import check_keys, load_state_dict_file, read_json, read_state_dict, require_files
from omnibench.protocol import OmnibenchError


class Payload:
    """Unpickling it would create `marker`: the file must never appear."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class PlainObject:
    def __init__(self) -> None:
        self.weight = torch.zeros(2)


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text.strip() == text and text
    return text


def save_payload(file: Path) -> Path:
    """`file` holding a pickle payload; returns the marker that running it would create."""
    marker = file.parent.parent / f"{file.parent.name}-{file.name}-was-executed"
    torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, file)
    return marker


def with_payload(src: Path, dst: Path, name: str) -> Path:
    """A copy of checkpoint folder `src` whose weights are replaced by a pickle payload in `name`."""
    shutil.copytree(src, dst)
    for weights in [*dst.glob("*.safetensors"), *dst.glob("*.pth"), *dst.glob("*.bin")]:
        weights.unlink()
    return save_payload(dst / name)


def truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


# --- the one reader ---------------------------------------------------------------------------------
def test_a_pickle_payload_is_refused_without_running_it(tmp_path):
    (tmp_path / "w").mkdir()
    marker = save_payload(tmp_path / "w" / "weights.pth")
    with pytest.raises(OmnibenchError) as err:
        load_state_dict_file(tmp_path / "w" / "weights.pth")
    text = one_line(err)
    assert text.startswith(f"refusing to load {tmp_path / 'w' / 'weights.pth'}: it holds pickled Python objects")
    assert "weights_only=True rejected it" in text and "convert it to safetensors" in text
    assert not marker.exists()


def test_a_pickled_class_instance_is_refused_and_named(tmp_path):
    torch.save(PlainObject(), tmp_path / "model.pth")
    with pytest.raises(OmnibenchError, match="pickled Python objects.*PlainObject") as err:
        load_state_dict_file(tmp_path / "model.pth")
    one_line(err)


@pytest.mark.parametrize("name", ["model.safetensors", "model.pth"])
def test_a_truncated_file_is_one_line_asking_to_redownload(tmp_path, name):
    from safetensors.torch import save_file

    sd = {"a": torch.arange(1000.0), "b": torch.ones(3, 4)}
    save_file(sd, str(tmp_path / name)) if name.endswith(".safetensors") else torch.save(sd, tmp_path / name)
    assert torch.equal(load_state_dict_file(tmp_path / name)["a"], sd["a"])  # whole, it reads
    truncate(tmp_path / name)
    with pytest.raises(OmnibenchError, match=rf"^cannot read checkpoint {tmp_path / name}: .*\(re-download it\)$") as err:
        load_state_dict_file(tmp_path / name)
    one_line(err)


def test_an_empty_file_and_a_git_lfs_pointer_are_named(tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(OmnibenchError, match="cannot read checkpoint .*empty.bin: EOFError") as err:
        load_state_dict_file(tmp_path / "empty.bin")
    one_line(err)
    (tmp_path / "lfs.bin").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    with pytest.raises(OmnibenchError, match="git-lfs pointer") as err:
        load_state_dict_file(tmp_path / "lfs.bin")
    one_line(err)
    (tmp_path / "garbage.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(OmnibenchError, match=r"garbage.bin: torch.load weights_only=True rejected it "
                                             r"\(.*\), so it is corrupt") as err:
        load_state_dict_file(tmp_path / "garbage.bin")
    one_line(err)


def test_a_nested_trainer_checkpoint_is_unwrapped_and_a_non_state_dict_refused(tmp_path):
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "nested.pth")
    assert list(load_state_dict_file(tmp_path / "nested.pth")) == ["w"]
    torch.save([torch.ones(2)], tmp_path / "list.pth")
    with pytest.raises(OmnibenchError, match="holds a list, not a state dict") as err:
        load_state_dict_file(tmp_path / "list.pth")
    one_line(err)
    torch.save({"w": torch.ones(2), "epoch": 3}, tmp_path / "extra.pth")
    with pytest.raises(OmnibenchError, match="epoch .*hold\\(s\\) no tensor"):
        load_state_dict_file(tmp_path / "extra.pth")


def test_a_folder_without_weights_or_config_names_what_it_lacks(tmp_path):
    with pytest.raises(OmnibenchError, match=rf"folder {tmp_path} lacks config.json, weights") as err:
        require_files(tmp_path, "checkpoint", names=("config.json",))
    one_line(err)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(OmnibenchError, match=rf"folder {tmp_path} lacks weights") as err:
        read_state_dict(tmp_path)
    with pytest.raises(OmnibenchError, match=rf"cannot read {tmp_path / 'config.json'}: .*re-download it") as err:
        read_json(tmp_path / "config.json")
    one_line(err)


def test_long_key_lists_are_cut_to_a_few_and_counted():
    expected = {f"layer.{i}.weight": torch.zeros(1) for i in range(40)}
    sd = {f"other.{i}": torch.zeros(1) for i in range(30)}
    with pytest.raises(OmnibenchError, match=r"missing key\(s\) .* \.\.\. \(40 in all\); unexpected key\(s\) "
                                             r".* \.\.\. \(30 in all\)$") as err:
        check_keys(expected, sd, "ckpt")
    assert one_line(err).count("layer.") == 5
    with pytest.raises(OmnibenchError, match=r"key layer.0.weight has shape \(2,\).* \(and 39 more") as err:
        check_keys(expected, {k: torch.zeros(2) for k in expected}, "ckpt")
    one_line(err)


# --- every family's own entry point -----------------------------------------------------------------
def omnimamba_load(path: str):
    from omnibench.models.omnimamba.checkpoint import from_pretrained

    return from_pretrained(path)


def showo_load(path: str):
    from omnibench.models.showo.checkpoint import from_pretrained, tiny_checkpoint

    return from_pretrained(path, str(tiny_checkpoint() / "magvitv2"))


def showo_vq_load(path: str):
    from omnibench.models.showo.checkpoint import from_pretrained, tiny_checkpoint

    return from_pretrained(str(tiny_checkpoint() / "show-o"), path)


def janusflow_load(path: str):
    from omnibench.models.janusflow.checkpoint import from_pretrained

    return from_pretrained(path)


def hf_load(path: str):
    from omnibench.models.hf import HFAdapter

    return HFAdapter(pretrained=path)


def tiny(family: str) -> Path:
    if family == "omnimamba":
        from omnibench.models.omnimamba.checkpoint import tiny_checkpoint
        return tiny_checkpoint()
    if family == "janusflow":
        from omnibench.models.janusflow.checkpoint import tiny_checkpoint
        return tiny_checkpoint()
    if family == "hf":
        from omnibench.models.hf import resolve_tiny
        return resolve_tiny()
    from omnibench.models.showo.checkpoint import tiny_checkpoint
    return tiny_checkpoint() / ("magvitv2" if family == "showo_vq" else "show-o")


# family -> (loader, the file name its folder's weights may have as a PyTorch pickle)
FAMILIES = {"omnimamba": (omnimamba_load, "OmniMamba-1.3b.pth"), "showo": (showo_load, "pytorch_model.bin"),
            "showo_vq": (showo_vq_load, "pytorch_model.bin"), "janusflow": (janusflow_load, "pytorch_model.bin"),
            "hf": (hf_load, "pytorch_model.bin")}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_refuses_a_pickle_payload_in_its_weights_file(tmp_path, family):
    load, name = FAMILIES[family]
    marker = with_payload(tiny(family), tmp_path / "ckpt", name)
    with pytest.raises(OmnibenchError, match="pickle") as err:
        load(str(tmp_path / "ckpt"))
    assert str(tmp_path / "ckpt") in one_line(err)
    assert not marker.exists()


def test_omnimamba_refuses_a_pickle_payload_given_as_a_bare_pth(tmp_path):
    (tmp_path / "w").mkdir()
    marker = save_payload(tmp_path / "w" / "omnimamba.pth")
    with pytest.raises(OmnibenchError, match=f"refusing to load {tmp_path / 'w' / 'omnimamba.pth'}: .*pickle") as err:
        omnimamba_load(str(tmp_path / "w" / "omnimamba.pth"))
    one_line(err)
    assert not marker.exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_names_a_truncated_weights_file(tmp_path, family):
    load, _ = FAMILIES[family]
    shutil.copytree(tiny(family), tmp_path / "ckpt")
    weights = next(p for p in sorted((tmp_path / "ckpt").iterdir()) if p.suffix in (".safetensors", ".pth"))
    truncate(weights)
    with pytest.raises(OmnibenchError, match="cannot read checkpoint .*re-download it") as err:
        load(str(tmp_path / "ckpt"))
    assert str(tmp_path / "ckpt") in one_line(err)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_names_a_missing_path_an_uncached_hub_id_and_an_empty_folder(tmp_path, monkeypatch, family):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    load, _ = FAMILIES[family]
    arg = "vq_model" if family == "showo_vq" else "pretrained"
    with pytest.raises(OmnibenchError, match=f"{tmp_path / 'nowhere'} is not a local folder .*pass {arg}=") as err:
        load(str(tmp_path / "nowhere"))
    one_line(err)
    with pytest.raises(OmnibenchError, match=f"'nosuch/model' is not a local folder and the hub did not give it "
                                             f".*pass {arg}=") as err:
        load("nosuch/model")
    one_line(err)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OmnibenchError, match=f"folder {tmp_path / 'empty'} lacks ") as err:
        load(str(tmp_path / "empty"))
    one_line(err)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_still_loads_its_valid_tiny_checkpoint(family):
    load, _ = FAMILIES[family]
    assert load(str(tiny(family))) is not None


def test_the_janusflow_vae_refuses_a_pickle_payload(tmp_path):
    pytest.importorskip("diffusers")
    from omnibench.models.janusflow.checkpoint import load_vae

    marker = with_payload(tiny("janusflow") / "vae", tmp_path / "vae", "diffusion_pytorch_model.bin")
    with pytest.raises(OmnibenchError, match=f"refusing to load {tmp_path / 'vae'}: .*pickle") as err:
        load_vae(str(tmp_path / "vae"), "cpu", torch.float32)
    one_line(err)
    assert not marker.exists()


@pytest.mark.parametrize("family", ["omnimamba", "showo"])
def test_the_cli_reports_a_pickle_payload_in_one_line_and_exits_2(tmp_path, capsys, family):
    from omnibench.cli import main

    marker = with_payload(tiny(family), tmp_path / "ckpt", FAMILIES[family][1])
    argv = ["--model", family, "--model_args", f"pretrained={tmp_path / 'ckpt'}", "--tasks", "pope",
            "--task_args", "sample=true", "--device", "cpu", "--output_path", str(tmp_path / "out")]
    assert main(argv) == 2  # the first run may also show the progress of building pope's sample rows
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: refusing to load ") and "pickle" in err
    assert str(tmp_path / "ckpt") in err
    assert not marker.exists()
