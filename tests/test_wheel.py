"""The installed package, not the checkout: build the wheel, install it into a fresh virtual environment
outside the repository, and run the tiny offline evaluation from another folder. Catches a module or a
data file the wheel leaves out, and imports that only work from the repository root."""
import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_installs_under_one_import_root_and_runs_offline(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True, text=True, timeout=600)
    wheel = next(dist.glob("omnibench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"omnibench"}, tops  # no generic top-level `models` or `tasks` in site-packages
    assert "omnibench/models/omnimamba/adapter.py" in names and "omnibench/tasks/pope.py" in names
    assert "omnibench/paper/table1_understanding.json" in names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    site = Path(subprocess.run([str(env_dir / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # The dependencies (torch, transformers, ...) come from this environment, read as a plain path: its
    # .pth files (the editable install of the checkout among them) are not processed there.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, text=True, timeout=600)

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "OMNIBENCH_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ""}
    where = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import omnibench, omnibench.models; "
                            "print(omnibench.__file__); print(omnibench.models.__file__)"],
                           cwd=work, env=env, check=True, capture_output=True, text=True).stdout
    assert str(ROOT) not in where and str(site) in where, where
    run = subprocess.run([str(env_dir / "bin" / "python"), "-m", "omnibench", "--model", "omnimamba", "--model_args",
                          "preset=tiny", "--tasks", "pope", "--task_args", "sample=true", "--limit", "2", "--device",
                          "cpu", "--output_path", str(work / "out")],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    folder = next((work / "out").glob("omnimamba_*"))
    results = json.loads((folder / "results.json").read_text())
    assert results["n_samples"]["pope"]["total"] == 2
    report = (folder / "report.md").read_text()
    assert "No published table found" not in report and "| OmniMamba" in report
