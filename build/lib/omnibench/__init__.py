"""omnibench: evaluation harness for unified multimodal models (OmniMamba and its baselines).

One import root: the engine is `omnibench`, the model families `omnibench.models`, the benchmarks
`omnibench.tasks`. Installed, `models/` and `tasks/` sit inside this package (pyproject.toml's
package-dir); in a checkout they stand beside it, and this package's path reaches them there."""
from pathlib import Path as _Path

__version__ = "0.1.0"

_here = _Path(__file__).resolve().parent
if not (_here / "models").is_dir() and (_here.parent / "models" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # noqa: F821 (a package's __path__)
