"""Exact resume on CPU: N steps straight == N/2 steps, a crash, --resume auto, N/2 more (bit for bit)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from clipkit.train import checkpoint as ck
from clipkit.train.config import TrainConfig
from clipkit.train.loop import train

STEPS = 4


class Crash(Exception):
    pass


def crash_after(step_to_crash: int):
    """A hook that kills the run right after `step_to_crash` (its checkpoint is already written)."""
    def hook(step, **_):
        if step == step_to_crash:
            raise Crash(step)
    return hook


def _cfg(out, **kw):
    base = dict(model="clipkit-nano", out=str(out), steps=STEPS, batch_size=8, warmup=2, log_every=1,
                save_every=STEPS // 2, tensorboard=False, progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    """12 small synthetic images in a CSV: 4 steps x 8 samples wrap into a third epoch (permutation per epoch)."""
    from clipkit.world import synth
    root = tmp_path_factory.mktemp("csv")
    rows = ["filepath,title"]
    for i in range(12):
        scene = synth.corpus_item(i, seed=5)
        synth.render(scene, size=40).save(root / f"{i}.png")
        rows.append(f"{i}.png,{synth.caption(scene)}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root / "train.csv"


def _weights(out):
    return load_file(str(out / "model.safetensors"))


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), (k, (a[k] - b[k]).abs().max())


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory, csv_data):
    """The uninterrupted runs to compare against, one per data kind."""
    root = tmp_path_factory.mktemp("straight")
    return {kind: _weights(train(_cfg(root / kind, **_extra(kind, csv_data)))) for kind in ("synthetic", "csv")}


def _extra(kind, csv_data):
    return {} if kind == "synthetic" else dict(data="csv", data_path=str(csv_data), loss="negclip",
                                               hard_negatives=2, workers=2)


@pytest.mark.parametrize("kind", ["synthetic", "csv"])
def test_resume_is_bit_identical(tmp_path, kind, csv_data, straight_runs):
    half, extra = STEPS // 2, _extra(kind, csv_data)
    with pytest.raises(Crash):   # stopped right after the step-2 checkpoint was written
        train(_cfg(tmp_path, **extra), hooks=[crash_after(half)])
    resumed = train(_cfg(tmp_path, resume="auto", **extra))
    _assert_identical(straight_runs[kind], _weights(resumed))
    steps = [json.loads(line)["step"] for line in (resumed / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))   # the resumed run went on from step 3, no step twice


def test_truncated_checkpoint_is_skipped_and_resume_still_exact(tmp_path, capsys, straight_runs):
    with pytest.raises(Crash):
        train(_cfg(tmp_path, save_every=1), hooks=[crash_after(3)])
    newest = tmp_path / "checkpoints" / "step_0000003"
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])     # a half-copied file
    assert ck.find_resume(tmp_path).name == "step_0000002"
    assert "skipping unreadable checkpoint" in capsys.readouterr().err
    resumed = train(_cfg(tmp_path, save_every=1, resume="auto"))          # redoes step 3, then 4
    _assert_identical(straight_runs["synthetic"], _weights(resumed))


def test_state_holds_everything_loads_weights_only_and_old_checkpoints_are_pruned(tmp_path):
    out = train(_cfg(tmp_path, save_every=1, keep_checkpoints=2))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000003", "step_0000004"]
    state = torch.load(out / "checkpoints" / "step_0000003" / "state.pt", weights_only=True)
    assert {"optimizer", "scheduler", "scaler", "rng", "step", "position", "counters", "config",
            "versions"} <= set(state)
    assert state["step"] == 3 and state["position"] == 3 * 8
    assert {"python", "numpy", "torch"} <= set(state["rng"][0])
    assert state["config"]["model"] == "clipkit-nano" and "torch" in state["versions"]
    assert not list(out.rglob("*.tmp"))   # atomic writes leave no temporary files behind
