import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Built-in samples and tiny presets go to a per-session folder, never the user's cache."""
    os.environ["OMNIBENCH_CACHE"] = str(tmp_path_factory.mktemp("omnibench_cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    yield
