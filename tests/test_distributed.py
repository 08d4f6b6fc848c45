"""DDP on CPU (gloo, 2 processes) against one process over the same global batch: same loss, same gradients.

One pair of spawned processes does all the distributed work (process start-up dominates): the
gradients of each loss (with 2-step accumulation on the DDP side), then a 3-step `train()` run.
The reference side runs in the test process. In-memory and on localhost only, no network.
"""
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

WORLD = 2
GLOBAL = 8          # global contrastive batch
HARD = 2            # hard negatives per caption for negclip
LOSSES = ("clip", "siglip", "negclip")


def _global_batch(h: int = HARD) -> dict:
    """A fixed batch: images (8,3,32,32), texts (8,16), neg_text (8,h,16), neg_valid (8,h)."""
    g = torch.Generator().manual_seed(1)
    text = torch.randint(1, 400, (GLOBAL, 16), generator=g)
    text[:, 7] = 49407                       # end-of-text token: the text tower pools here
    neg = torch.randint(1, 400, (GLOBAL, h, 16), generator=g)
    neg[..., 7] = 49407
    valid = torch.ones(GLOBAL, h, dtype=torch.bool)
    valid[0, 1] = False                      # one padding slot, to exercise the mask
    return {"image": torch.randn(GLOBAL, 3, 32, 32, generator=g), "text": text, "neg_text": neg,
            "neg_valid": valid}


def _slice(batch: dict, lo: int, hi: int, negatives: bool) -> dict:
    return {k: v[lo:hi] for k, v in batch.items() if negatives or k in ("image", "text")}


def _grads(loss_name: str, micro_batches: list[dict], ddp: bool):
    """(loss, {param: grad}) of one step of ContrastiveForward + loss, as the training loop does it."""
    from contextlib import nullcontext

    from clipkit.train.losses import make_loss
    from clipkit.models import create_model
    from clipkit.train.step import ContrastiveForward, forward_backward
    kw = {"init_logit_scale": math.log(10), "init_logit_bias": -10.0} if loss_name == "siglip" else {}
    model, _, _ = create_model("clipkit-nano", seed=0, **kw)
    fm = ContrastiveForward(model)
    if ddp:
        fm = torch.nn.parallel.DistributedDataParallel(fm, broadcast_buffers=False)
    loss = forward_backward(fm, make_loss(loss_name), micro_batches, torch.device("cpu"), nullcontext)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _train_cfg(out, batch_size, **kw):
    from clipkit.train.config import TrainConfig
    return TrainConfig(model="clipkit-nano", out=str(out), steps=3, batch_size=batch_size, warmup=1,
                       workers=0, log_every=1, save_every=0, tensorboard=False, progress=False, **kw)


def _nan_on_rank_1_at_step_2():
    """A CLIP loss that is NaN on rank 1 only, at its second call."""
    from clipkit.train.losses import ClipLoss

    class Loss(ClipLoss):
        calls = 0

        def forward(self, image_features, text_features, logit_scale, **kw):
            import torch.distributed as dist
            Loss.calls += 1
            out = super().forward(image_features, text_features, logit_scale)
            if dist.get_rank() == 1 and Loss.calls == 2:
                out["contrastive_loss"] = out["contrastive_loss"] * float("nan")
            return out
    return Loss


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from clipkit.train.loop import train
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    batch, per = _global_batch(), GLOBAL // WORLD
    results = {}
    for name in LOSSES:
        mine = _slice(batch, rank * per, (rank + 1) * per, name == "negclip")
        # this rank's contiguous block of the global batch, as 2 accumulated micro-batches
        micro = [_slice(mine, 0, per // 2, True), _slice(mine, per // 2, per, True)]
        loss, grads = _grads(name, micro, ddp=True)
        dist.all_reduce(loss)
        results[name] = {"loss": loss / WORLD, "grads": grads}
    out = train(_train_cfg(os.path.join(out_dir, "ddp"), GLOBAL // WORLD))
    # a non-finite loss on one rank only: every rank must skip that update
    from clipkit.train import losses
    losses.LOSSES["nan_rank1"] = _nan_on_rank_1_at_step_2()
    nan_out = train(_train_cfg(os.path.join(out_dir, "nan"), GLOBAL // WORLD, loss="nan_rank1"))
    if rank == 0:
        results["train_out"], results["nan_out"] = str(out), str(nan_out)
        torch.save(results, os.path.join(out_dir, "ddp.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    import clipkit.train  # noqa: F401  (imported once here; the forked children inherit it)
    out = tmp_path_factory.mktemp("ddp")
    # fork: the children inherit the imported torch/open_clip (seconds saved); they run single-threaded
    # (torch.set_num_threads(1) first), which keeps a forked OpenMP runtime safe, as in DataLoader workers
    mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True, start_method="fork")
    return torch.load(out / "ddp.pt", weights_only=True), out


@pytest.mark.parametrize("loss_name", LOSSES)
def test_two_process_loss_and_gradients_equal_one_process(ddp_results, loss_name):
    results, _ = ddp_results
    batch = _global_batch()
    loss, grads = _grads(loss_name, [_slice(batch, 0, GLOBAL, loss_name == "negclip")], ddp=False)
    got = results[loss_name]
    assert torch.allclose(got["loss"], loss, rtol=1e-5, atol=1e-6), (got["loss"], loss)
    assert set(got["grads"]) == set(grads)
    for n, g in grads.items():
        # DDP averages each rank's gradient; the gather's backward sums every rank's share back:
        # together exactly the one-process gradient (not 1/world_size or world_size times it)
        assert torch.allclose(got["grads"][n], g, rtol=1e-4, atol=1e-6), \
            (n, (got["grads"][n] - g).abs().max(), g.abs().max())


def test_two_process_training_run_matches_one_process(ddp_results, tmp_path):
    import json

    from safetensors.torch import load_file

    from clipkit.train.loop import train
    results, _ = ddp_results
    one = train(_train_cfg(tmp_path / "one", GLOBAL))
    two = results["train_out"]
    logs = [[json.loads(line) for line in open(os.path.join(d, "log.jsonl"))] for d in (one, two)]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [1, 2, 3]
    for a, b in zip(*logs):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4), (a, b)
        assert a["read"] == b["read"]     # both saw the same global batches
    wa, wb = load_file(os.path.join(one, "model.safetensors")), load_file(os.path.join(two, "model.safetensors"))
    for k in wa:
        # Adam divides each coordinate by its own gradient scale, so where the true gradient is 0
        # (attention key biases) float rounding noise becomes an update of a small fraction of lr
        assert torch.allclose(wa[k], wb[k], atol=1e-4), (k, (wa[k] - wb[k]).abs().max())


def test_a_nonfinite_loss_on_one_rank_skips_the_step_on_all(ddp_results):
    import json

    from safetensors.torch import load_file
    results, _ = ddp_results
    out = results["nan_out"]
    log = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    assert [r["skipped_steps"] for r in log] == [0, 1, 1]
    # rank 0's own loss was finite, but the gradients it received were not: without the agreed
    # flag it would have applied them
    assert all(torch.isfinite(v).all() for v in load_file(os.path.join(out, "model.safetensors")).values())
