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


def test_replayed_steps_are_logged_once_in_jsonl_and_tensorboard(tmp_path, straight_runs):
    """A crash after step 3 with the newest checkpoint at step 2: step 3 is trained again on resume, and
    both logs keep only the second copy."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    with pytest.raises(Crash):
        train(_cfg(tmp_path, tensorboard=True), hooks=[crash_after(3)])
    assert [json.loads(x)["step"] for x in (tmp_path / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    resumed = train(_cfg(tmp_path, tensorboard=True, resume="auto"))
    _assert_identical(straight_runs["synthetic"], _weights(resumed))
    steps = [json.loads(x)["step"] for x in (resumed / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    acc = EventAccumulator(str(resumed / "tensorboard"), purge_orphaned_data=True)
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]


# --- SIGINT / SIGTERM: a checkpoint, one line, and `--resume auto` alone continues bit for bit ----------
SIGNAL_STEPS = 40
TRAIN_FLAGS = ["--preset", "nano", "--steps", str(SIGNAL_STEPS), "--batch-size", "8", "--log-every", "5",
               "--save-every", "20", "--no-progress"]


def _clipkit(*args, **kw):
    import subprocess
    import sys
    return subprocess.Popen([sys.executable, "-m", "clipkit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _steps(out):
    return [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight_cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight_cli") / "run"
    proc = _clipkit("train", *TRAIN_FLAGS, "--out", str(out))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out


@pytest.mark.slow
@pytest.mark.parametrize("signame, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_saves_a_checkpoint_and_resume_auto_alone_continues_bit_identically(
        tmp_path, signame, code, straight_cli_run):
    import signal
    import time
    out = tmp_path / "run"
    proc = _clipkit("train", *TRAIN_FLAGS, "--out", str(out))
    deadline = time.time() + 300
    while not ((out / "log.jsonl").exists() and (out / "log.jsonl").read_text().count("\n") >= 1):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1]
        time.sleep(0.05)
    proc.send_signal(getattr(signal, signame))     # after step 5 was logged: mid-way, off a save step
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    step = int(last.split(" at step ")[1].split("/")[0])
    assert 5 <= step < SIGNAL_STEPS, last
    ckpt = out / "checkpoints" / f"step_{step:07d}"
    assert last == (f"clipkit train: interrupted by {signame} at step {step}/{SIGNAL_STEPS}; checkpoint: "
                    f"{ckpt}; continue with: clipkit train --out {out} --resume auto")
    assert (ckpt / "state.pt").exists() and _steps(out)[-1] == step    # the counters of the stop step

    proc = _clipkit("train", "--out", str(out), "--resume", "auto")   # no other flag: the run's config.json
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert f"resumed from {ckpt} at step {step}" in err
    _assert_identical(_weights(straight_cli_run), _weights(out))
    steps = _steps(out)
    assert steps == sorted(set(steps)) and steps[-1] == SIGNAL_STEPS    # each step once, in order
    assert set(_steps(straight_cli_run)) <= set(steps)                  # the regular records, and the stop's
