"""The training loop end to end on clipkit-nano (seconds on a CPU): outputs, real data with corrupt
files, the non-finite guard, precision modes, the paper's optimiser set-up, the evaluation hook."""
import json
import math

import pytest
import torch

from clipkit.train.config import TrainConfig
from clipkit.train.losses import LOSSES, ClipLoss
from clipkit.cli import train_main as main
from clipkit.train.loop import NonFiniteLoss, TooManyBadSamples, train
from clipkit.train.step import adam_betas_eps, cosine_with_warmup, param_groups


def _cfg(out, **kw):
    base = dict(model="clipkit-nano", out=str(out), steps=3, batch_size=8, warmup=1, log_every=1,
                save_every=0, tensorboard=False, progress=False)
    return TrainConfig(**{**base, **kw})


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_run_writes_the_output_layout_and_a_loadable_model(tmp_path):
    from clipkit.models import load_model
    out = train(_cfg(tmp_path, steps=4, save_every=2, tensorboard=True, progress=True))
    for rel in ("config.json", "log.jsonl", "model.safetensors", "clipkit.json",
                "checkpoints/step_0000002/model.safetensors", "checkpoints/step_0000004/state.pt"):
        assert (out / rel).exists(), rel
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    rec = _log(out)[-1]
    assert {"step", "loss", "lr", "temperature", "samples_per_s", "grad_norm", "bad_samples",
            "skipped_steps"} <= set(rec) and rec["step"] == 4 and math.isfinite(rec["loss"])
    assert json.loads((out / "config.json").read_text())["model"] == "clipkit-nano"
    model, preprocess, tokenizer = load_model(str(out))
    assert abs(model.logit_scale.exp().item() - 1 / 0.07) < 0.5     # §2.5 init, barely moved


@pytest.fixture
def corrupt_csv(tmp_path):
    """24 images of which 3 are broken: empty, truncated, not an image."""
    from clipkit.world import synth
    rows = ["filepath\ttitle"]
    for i in range(24):
        scene = synth.corpus_item(i, seed=2)
        path = tmp_path / f"{i}.jpg"
        synth.render(scene, size=40).save(path)
        rows.append(f"{i}.jpg\t{synth.caption(scene)}")
    (tmp_path / "5.jpg").write_bytes(b"")
    (tmp_path / "9.jpg").write_bytes((tmp_path / "9.jpg").read_bytes()[:200])
    (tmp_path / "13.jpg").write_text("<html>404 not found</html>")
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    return tmp_path / "train.tsv"


def test_csv_run_with_corrupt_files_completes_and_reports_the_skips(tmp_path, corrupt_csv, capfd):
    code = main(["--preset", "nano", "--data", "csv", "--data-path", str(corrupt_csv), "--steps", "3",
                 "--batch-size", "8", "--workers", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 0
    err = capfd.readouterr().err      # (the worker process names the bad files on fd 2)
    assert "skipping unreadable image" in err and "unreadable images skipped of" in err
    meta = json.loads((tmp_path / "run" / "clipkit.json").read_text())
    # 3 steps x 8 = one pass over 24 rows: each broken file was met once and replaced by the next row
    assert meta["bad_samples"] == 3 and meta["read"] == 27
    assert _log(tmp_path / "run")[-1]["bad_samples"] == 3


def test_too_many_bad_images_stop_the_run(tmp_path, corrupt_csv):
    with pytest.raises(TooManyBadSamples, match=r"3 of 27 images read .* --max-bad-fraction 0.05"):
        train(_cfg(tmp_path / "run", data="csv", data_path=str(corrupt_csv), max_bad_fraction=0.05, log_every=3))


class NanOnSecondCall(ClipLoss):
    calls = 0

    def forward(self, image_features, text_features, logit_scale, **kw):
        NanOnSecondCall.calls += 1
        out = super().forward(image_features, text_features, logit_scale)
        if NanOnSecondCall.calls == 2:
            out["contrastive_loss"] = out["contrastive_loss"] * float("nan")
        return out


@pytest.fixture
def nan_loss(monkeypatch):
    NanOnSecondCall.calls = 0
    monkeypatch.setitem(LOSSES, "nan2", NanOnSecondCall)
    return "nan2"


def test_nonfinite_step_is_skipped_on_the_device(tmp_path, nan_loss, capsys):
    out = train(_cfg(tmp_path, loss=nan_loss, nonfinite="skip"))
    assert [r["skipped_steps"] for r in _log(out)] == [0, 1, 1]
    assert "step 2: non-finite loss, update skipped" in capsys.readouterr().err
    state = torch.load(out / "checkpoints" / "step_0000003" / "state.pt", weights_only=True)
    assert all(s["step"].item() == 2 for s in state["optimizer"]["state"].values())   # 3 steps, 2 updates
    from safetensors.torch import load_file
    assert all(torch.isfinite(v).all() for v in load_file(str(out / "model.safetensors")).values())


def test_nonfinite_stop_names_the_step_and_samples(tmp_path, nan_loss):
    with pytest.raises(NonFiniteLoss, match=r"step 2: .*Samples of this step on rank 0: \[8, 9, 10"):
        train(_cfg(tmp_path, loss=nan_loss, nonfinite="stop"))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_on_cpu(tmp_path, precision):
    out = train(_cfg(tmp_path, steps=2, precision=precision))
    assert all(math.isfinite(r["loss"]) for r in _log(out))


def test_siglip_negclip_and_accumulation_train(tmp_path):
    sig = train(_cfg(tmp_path / "sig", loss="siglip", steps=2))
    rec = _log(sig)[-1]
    assert "logit_bias" in rec and abs(rec["logit_bias"] + 10) < 0.1 and abs(rec["temperature"] - 0.1) < 0.01
    neg = train(_cfg(tmp_path / "neg", loss="negclip", hard_negatives=2, accum_steps=2, batch_size=4, steps=2))
    assert _log(neg)[-1]["read"] == 2 * 2 * 4


def test_paper_optimiser_set_up():
    from clipkit.models import create_model
    model, _, _ = create_model("clipkit-nano")
    no_decay, decay = param_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in nd and "ln_final.weight" in nd and "visual.conv1.weight" not in nd
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.2
    assert adam_betas_eps(model, 0.9, None, None) == ((0.9, 0.98), 1e-6)          # a ViT
    assert adam_betas_eps(torch.nn.Linear(2, 2), 0.9, None, None) == ((0.9, 0.999), 1e-8)
    f = cosine_with_warmup(10, 110)
    assert f(0) == 0.1 and f(9) == 1.0 and abs(f(60) - 0.5) < 1e-9 and f(110) == 0.0


def test_eval_hook_logs_retrieval_and_probe_accuracy(tmp_path):
    from clipkit.probes.hooks import EvalHook
    out = train(_cfg(tmp_path, steps=2), hooks=[EvalHook("clipkit-nano", every=2, n=12)])
    evals = [r for r in _log(out) if r.get("kind") == "eval"]
    assert len(evals) == 1 and evals[0]["step"] == 2
    assert {"image_retrieval_recall@1", "counting_acc", "counting_chance", "spatial_acc"} <= set(evals[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gpu_run(tmp_path, precision):
    out = train(_cfg(tmp_path, steps=3, precision=precision, device="cuda", workers=2))
    assert all(math.isfinite(r["loss"]) for r in _log(out))
