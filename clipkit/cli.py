"""`clipkit train | probe | eval | report` — thin wrappers over the library."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

USAGE = """usage: clipkit COMMAND [ARGS]

commands:
  train    train a CLIP model contrastively (see `clipkit train --help`)
  probe    run probe specs on a model:  clipkit probe --model SPEC [--model SPEC ...] [--probe counting ...] [--out DIR]
  eval     retrieval on held-out synthetic scenes:  clipkit eval --model SPEC [--n 500]
  report   execute the probe notebooks into reports/:  clipkit report --model SPEC [--model SPEC ...]
"""


def probe_main(argv=None) -> int:
    from clipkit.core.paths import slugify
    from clipkit.models import DEFAULT_MODEL, load_model
    from clipkit.probes import load_spec, parse_option, run_any
    from clipkit.probes.protocol import describe_kinds
    from clipkit.probes.shift_results import ShiftResult
    p = argparse.ArgumentParser(prog="clipkit probe", description="Run probe specs on a model. A spec is a name "
                                "(searched in $CLIPKIT_PROBES's folders, then in the specs shipped with clipkit) "
                                "or a YAML path.", formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="probe kinds and their --option keys (defaults):\n" + describe_kinds())
    p.add_argument("--model", action="append", help=f"model spec (see clipkit.models; default {DEFAULT_MODEL}); "
                   "repeatable: with several models, each shift probe also prints the effective-robustness table")
    p.add_argument("--probe", action="append", help="a spec name (e.g. counting, spatial, shift) or a YAML path "
                   "(repeatable; any kind: caption choice, fine-grained, shift; default: counting and spatial)")
    p.add_argument("--n", type=int, default=None, help="override the number of items")
    p.add_argument("--seed", type=int, default=None, help="override the item seed")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec option, the value read as YAML (e.g. counts=[1,2,3], mode=swap); "
                        "repeatable, applied to every --probe; an unknown key lists the kind's options")
    p.add_argument("--out", default=None, help="write <probe>.csv and <probe>.json here (several models: "
                   "one sub-folder per model, and <probe>.effective_robustness.csv)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    models = a.model or [DEFAULT_MODEL]
    options = dict(parse_option(o) for o in a.option)
    specs = [load_spec(s, n=a.n, seed=a.seed, options=options) for s in (a.probe or ["counting", "spatial"])]
    shift_results: dict[str, list] = {}   # probe name -> one ShiftResult per model
    for i, name in enumerate(models):
        model, preprocess, tokenizer = load_model(name, device=a.device)
        if len(models) > 1:
            print(f"== {name}")
        for spec in specs:
            r = run_any(spec, model, preprocess, tokenizer, model_name=name)
            s = r.metrics()
            print(f"{spec.name:24s} acc {s['accuracy']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] "
                  f"chance {s['chance']:.3f} n {s['n']} ({s['verdict']})")
            for f, df in getattr(r, "breakdowns", {}).items():
                print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
            if isinstance(r, ShiftResult):
                shift_results.setdefault(spec.name, []).append(r)
            if a.out:   # several models: one numbered folder each, so two specs with one slug never collide
                r.save(a.out if len(models) == 1 else Path(a.out) / f"{i:02d}-{slugify(name)}")
    if len(models) > 1:
        for probe, results in shift_results.items():
            _print_effective_robustness(probe, results, a.out)
    return 0


def _print_effective_robustness(probe: str, results: list, out: str | None) -> None:
    """§3.3 across models: every (model, classifier) is a point of the logit-space trend (analysis.robustness.effective_robustness_of)."""
    from clipkit.analysis.robustness import effective_robustness_of
    try:
        er = effective_robustness_of(results)
    except ValueError as e:   # too few points with distinct ID accuracies: say so, keep the per-model results
        print(f"{probe}: effective robustness not computed: {e}")
        return
    print(f"{probe}: effective robustness (trend fitted over all {len(er)} model | classifier points)")
    print(er.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if out:
        from clipkit.core.files import atomic_write_text
        atomic_write_text(Path(out) / f"{probe}.effective_robustness.csv", er.to_csv(index=False))


def eval_main(argv=None) -> int:
    from clipkit.models import DEFAULT_MODEL, load_model
    from clipkit.evaluate.synthetic import HELD_OUT_SEED, synthetic_retrieval
    p = argparse.ArgumentParser(prog="clipkit eval", description="Caption<->image retrieval on held-out "
                                "synthetic scenes (recall@k, with the chance level).")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--n", type=int, default=500, help="held-out scenes")
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED,
                   help="corpus seed of the held-out scenes (training uses the run's --seed, default 0: "
                        "do not evaluate on that)")
    a = p.parse_args(argv)
    model, preprocess, tokenizer = load_model(a.model)
    print(json.dumps(synthetic_retrieval(model, preprocess, tokenizer, n=a.n, seed=a.seed), indent=2))
    return 0


def train_main(argv=None) -> int:
    """`clipkit train ...` / `torchrun ... -m clipkit train ...`: the config from flags and YAML, the
    evaluation hook (here, not in the loop: training never imports the probes), then the loop."""
    import os
    from clipkit.train.config import TrainConfig
    from clipkit.train.loop import train
    cfg = TrainConfig.from_argv(argv)
    hooks = []
    if cfg.eval_every:
        from clipkit.probes.hooks import EvalHook
        hooks.append(EvalHook(cfg.model, cfg.eval_every, cfg.eval_n))
    out = train(cfg, hooks)
    if int(os.environ.get("RANK", "0")) == 0:
        print(out)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        run = train_main
    elif cmd == "probe":
        run = probe_main
    elif cmd == "eval":
        run = eval_main
    elif cmd == "report":
        from clipkit.report.runner import main as run
    else:
        print(f"clipkit: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return run(rest)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        # clipkit's errors say what is wrong and how to fix it; a traceback adds nothing for users
        print(f"clipkit {cmd}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
