"""Shared fixtures: tiny models and an isolated CLIPKIT_HOME; no test touches the network."""
import os

import pytest
import torch

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


class BlindImageModel(torch.nn.Module):
    """A model whose image embedding ignores the image (all ones); its text side is the given model's."""

    def __init__(self, model):
        super().__init__()
        self.text = model

    def encode_image(self, x):
        return torch.ones(x.shape[0], self.text.encode_text(torch.zeros(1, 1, dtype=torch.long)).shape[-1])

    def encode_text(self, tokens):
        return self.text.encode_text(tokens)
