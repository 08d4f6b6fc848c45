"""Shared fixtures: tiny models and an isolated CLIPKIT_HOME; no test touches the network."""
import os

import pytest

os.environ.setdefault("CLIPKIT_OFFLINE", "1")   # model loading never probes the network in tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CLIPKIT_HOME", str(tmp_path_factory.getbasetemp() / "clipkit_home"))


@pytest.fixture(scope="session")
def nano():
    """A randomly initialised clipkit-nano (model, preprocess, tokenizer): loads in well under a second."""
    from clipkit.models import load_model
    return load_model("clipkit-nano")
