"""Every training run's output folder loads as the model it trained, whatever the loss (SigLIP's bias included)."""
import pytest
import torch

from clipkit.models import create_model, load_model
from clipkit.train.config import TrainConfig
from clipkit.train.losses import LOSSES
from clipkit.train.loop import train


class _Keep:
    """A training hook that keeps a reference to the model it is handed (the final weights after the run)."""

    def __call__(self, step, model, is_main):
        self.model = model
        return {}


def _outputs(model, tokenizer):
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)                        # (B, 3, H, W) at clipkit-nano's 32 px
    tokens = tokenizer(["two red circles", "a blue square left of a star", "one shape"])
    with torch.no_grad():
        out = {"image": model.encode_image(images, normalize=True), "text": model.encode_text(tokens, normalize=True),
               "logit_scale": model.logit_scale.detach().clone()}
        if getattr(model, "logit_bias", None) is not None:
            out["logit_bias"] = model.logit_bias.detach().clone()
        out["logits"] = out["logit_scale"].exp() * out["image"] @ out["text"].T + out.get("logit_bias", 0.0)
    return out


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_trained_folder_loads_with_the_same_logits(tmp_path, loss):
    keep = _Keep()
    cfg = TrainConfig(model="clipkit-nano", loss=loss, hard_negatives=2 if loss == "negclip" else 0,
                      data="synthetic", out=str(tmp_path / loss), steps=2, batch_size=4, warmup=1, log_every=1,
                      save_every=0, workers=0, tensorboard=False, progress=False)
    out = train(cfg, hooks=[keep])
    trained = keep.model.eval()
    loaded, _, tokenizer = load_model(str(out))
    want, got = _outputs(trained, tokenizer), _outputs(loaded, tokenizer)
    assert set(got) == set(want) and ("logit_bias" in got) == (loss == "siglip")
    for key in want:
        assert torch.allclose(got[key], want[key], atol=1e-6), key
    # the comparison can fail: two steps moved the weights away from a fresh model of the same seed
    fresh, _, _ = create_model("clipkit-nano", seed=cfg.seed)
    assert not torch.allclose(_outputs(fresh.eval(), tokenizer)["image"], want["image"], atol=1e-6)
    if loss == "siglip":   # SigLIP §3's init of -10, learned, not the loader's placeholder
        assert abs(got["logit_bias"].item() + 10) < 0.5
