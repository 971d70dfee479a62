"""The layout's rules, checked on the source: model families stand alone (each imports only itself,
models.common and the engine), and benchmarks live in bench/, not in models/."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = sorted(p.name for p in (ROOT / "models").iterdir() if (p / "__init__.py").is_file() and p.name != "common")


def imported_modules(path: Path, module: str) -> set[str]:
    package = module.rpartition(".")[0] if path.name != "__init__.py" else module
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            name = ".".join(p for p in ((base if node.level else ""), node.module or "") if p)
            out |= {name} | {f"{name}.{a.name}" for a in node.names}
    return out


def test_there_are_families_to_check():
    assert {"omnimamba", "showo", "janusflow"} <= set(FAMILIES)


def test_no_model_family_imports_another():
    offences = []
    for family in FAMILIES:
        for path in (ROOT / "models" / family).rglob("*.py"):
            module = "omnibench." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for name in imported_modules(path, module):
                parts = name.split(".")
                if parts[:2] == ["omnibench", "models"] and len(parts) > 2 and parts[2] in FAMILIES \
                        and parts[2] != family:
                    offences.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offences == []


def test_the_import_walk_sees_relative_and_absolute_imports(tmp_path):
    fake = tmp_path / "models" / "alpha" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..beta import y\nimport omnibench.models.gamma.z\nfrom omnibench.models.common import vq_blocks\n")
    assert {"omnibench.models.beta", "omnibench.models.beta.y", "omnibench.models.gamma.z",
            "omnibench.models.common"} <= imported_modules(fake, "omnibench.models.alpha.x")


def test_benchmarks_live_in_bench_not_in_models():
    assert not [p for p in (ROOT / "models").rglob("bench*.py")]


def test_the_engine_never_probes_adapters_for_methods():
    for path in (ROOT / "omnibench").glob("*.py"):
        text = path.read_text()
        assert "hasattr(adapter" not in text and "hasattr(cls" not in text and "inspect.signature" not in text, path


def test_speed_references_are_timed_but_not_evaluated(capsys):
    from omnibench.cli import main
    from omnibench.protocol import OmnibenchError, SpeedProtocol
    from omnibench.registry import get_model_class
    from omnibench.speed_cli import speed_model_class

    assert main(["--tasks", "list"]) == 0
    assert "mamba2_ref" not in capsys.readouterr().out
    assert issubclass(speed_model_class("mamba2_ref"), SpeedProtocol)
    assert issubclass(speed_model_class("omnimamba"), SpeedProtocol)
    import pytest
    with pytest.raises(OmnibenchError, match="unknown model 'mamba2_ref'"):
        get_model_class("mamba2_ref")
    with pytest.raises(OmnibenchError, match="model 'hf' has no prefill/decode_step"):
        speed_model_class("hf")
