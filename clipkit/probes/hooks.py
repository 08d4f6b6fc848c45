"""Hooks a training run calls after each step: `hook(step=, model=, is_main=) -> dict | None`.

A returned dict of numbers is logged (JSONL + TensorBoard under eval/). `EvalHook` runs the
held-out checks every N steps; the CLI (`clipkit train`) builds it from --eval-every and hands it
to the loop, so the training loop itself never imports evaluation or probe code.
"""
from __future__ import annotations

from clipkit.probes import load_spec, run_probe


class EvalHook:
    """Every `every` steps, on the main process: caption<->image retrieval on n held-out synthetic
    scenes, and the counting and spatial probes with n items each (accuracy and chance)."""

    def __init__(self, arch: str, every: int, n: int = 200, probes=("counting", "spatial")):
        self.arch, self.every, self.n, self.probes = arch, every, n, tuple(probes)
        self._tools = None

    def _setup(self, model):
        import open_clip
        size = model.visual.image_size
        preprocess = open_clip.image_transform(size if isinstance(size, int) else size[0], is_train=False)
        self._tools = (preprocess, open_clip.get_tokenizer(self.arch))

    def __call__(self, step: int, model, is_main: bool = True, **_) -> dict | None:
        if not is_main or not self.every or step % self.every:
            return None
        from clipkit.evaluate.synthetic import HELD_OUT_SEED, synthetic_retrieval   # torch: only when it runs
        if self._tools is None:
            self._setup(model)
        preprocess, tokenizer = self._tools
        was_training = model.training
        model.eval()
        try:
            r = synthetic_retrieval(model, preprocess, tokenizer, n=self.n, seed=HELD_OUT_SEED)
            out = {"step": step, **{k: v for k, v in r.items() if "@1" in k or "@5" in k}}
            for name in self.probes:
                s = run_probe(load_spec(name, n=self.n, seed=HELD_OUT_SEED), model, preprocess, tokenizer).summary
                out[f"{name}_acc"], out[f"{name}_chance"] = float(s["accuracy"]), float(s["chance"])
        finally:
            model.train(was_training)
        return out
