"""`clipkit train | probe | eval | report` — thin wrappers over the library.

Each command parses and checks its arguments and output folder before it imports torch or loads a
model: `--help` and a usage error answer in well under a second, in one line (bench/README.md).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from clipkit.core.files import ensure_writable_dir
from clipkit.core.modelspec import DEFAULT_MODEL, check_spec   # the model spec grammar, without torch
from clipkit.train.config import Parser, _did_you_mean

COMMANDS = ("train", "probe", "eval", "report")

USAGE = """usage: clipkit COMMAND [ARGS]

commands:
  train    train a CLIP model contrastively (see `clipkit train --help`)
  probe    run probe specs on a model:  clipkit probe --model SPEC [--model SPEC ...] [--probe counting ...] [--out DIR]
  eval     retrieval on held-out synthetic scenes:  clipkit eval --model SPEC [--n 500]
  report   execute the probe notebooks into reports/:  clipkit report --model SPEC [--model SPEC ...]
"""


def probe_main(argv=None) -> int:
    """`clipkit probe`: arguments, --out and every spec and model spec are checked before any model
    is loaded; then each model runs each spec, printing one line per probe and the files written."""
    p = Parser(prog="clipkit probe", description="Run probe specs on a model. A spec is a name "
               "(searched in $CLIPKIT_PROBES's folders, then in the specs shipped with clipkit) "
               "or a YAML path.", epilog="`clipkit probe --kinds` lists every probe kind with its --option "
               "keys and defaults, and the spec names found (it loads the probe registry: a few seconds).")
    p.add_argument("--kinds", action="store_true", help="list the probe kinds, their --option keys and "
                   "defaults, and the spec names found by name, then exit")
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
    p.add_argument("--diagnose", action="store_true", help="also say where each caption-choice probe's failure "
                   "lives: image_side, text_side, cross_modal (accuracy, CI, chance, n) and the pattern in words, "
                   "in the summary and the JSON")
    p.add_argument("--suite", default=None, choices=["failures"],
                   help="run a suite of published benchmarks instead of --probe: 'failures' = every benchmark found "
                        "under $CLIPKIT_DATA/<benchmark>/ (or --data); absent ones are listed with what to download")
    p.add_argument("--data", default=None, help="with --suite: the folder holding one sub-folder per benchmark "
                   "(default $CLIPKIT_DATA)")
    a = p.parse_args(argv)
    if a.suite and (a.probe or a.option):
        p.error("--suite runs every benchmark of the suite from --data or $CLIPKIT_DATA: drop --probe / --option")
    out = ensure_writable_dir(a.out) if a.out else None
    # the probe registry, spec reader and every kind's options: no torch (tests/test_first_hour.py)
    from clipkit.probes import known_specs, load_spec, parse_option
    if a.kinds:
        from clipkit.probes.protocol import describe_kinds
        print("probe kinds and their --option keys (defaults):\n" + describe_kinds())
        print("specs by name: " + ", ".join(f"{k} ({v})" for k, v in sorted(known_specs().items())))
        return 0
    if not a.suite:   # every spec (name, keys, options, --option), then every model spec, before torch
        options = dict(parse_option(o) for o in a.option)
        specs = [load_spec(s, n=a.n, seed=a.seed, options=options) for s in (a.probe or ["counting", "spatial"])]
    models = [check_spec(m) for m in a.model or [DEFAULT_MODEL]]   # a pretrained tag alone imports open_clip
    if a.suite:
        from clipkit.probes.suite import run_suite
        where = out or ensure_writable_dir(f"suite_{a.suite}")
        suite = run_suite(a.suite, models, where, data_root=a.data, device=a.device, n=a.n)
        print(suite.pretty())
        print(f"results: {where}")
        return 1 if suite.failed else 0
    from clipkit.core.paths import slugify
    from clipkit.models import load_model   # imports torch and open_clip
    from clipkit.probes import run_any
    from clipkit.probes.shift_results import ShiftResult
    if a.diagnose:
        from clipkit.analysis.diagnose import add_diagnosis
    shift_results: dict[str, list] = {}   # probe name -> one ShiftResult per model
    for i, name in enumerate(models):
        model, preprocess, tokenizer = load_model(name, device=a.device)
        print((f"== {name}" if len(models) > 1 else f"model: {name}")
              + ("" if out else "  (no --out: results are printed, not saved)"))
        for spec in specs:
            r = run_any(spec, model, preprocess, tokenizer, model_name=name)
            diagnosis = add_diagnosis(r, model, preprocess, tokenizer) if a.diagnose else None
            s = r.metrics()
            print(f"{spec.name:24s} acc {s['accuracy']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] "
                  f"chance {s['chance']:.3f} n {s['n']} ({s['verdict']})")
            if a.diagnose:
                print(f"{'':24s} diagnosis: " + (diagnosis["pattern"] if diagnosis
                                                 else "not a caption-choice probe (no diagnosis)"))
            for f, df in getattr(r, "breakdowns", {}).items():
                print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
            if isinstance(r, ShiftResult):
                shift_results.setdefault(spec.name, []).append(r)
            if out:   # several models: one numbered folder each, so two specs with one slug never collide
                t0 = time.time() - 1
                record = Path(r.save(out if len(models) == 1 else out / f"{i:02d}-{slugify(name)}"))
                tables = sorted(f.name for f in record.parent.glob(f"{spec.name}*.csv") if f.stat().st_mtime >= t0)
                print(f"{'':24s} wrote {record}" + (f" and {', '.join(tables)}" if tables else ""))
    if len(models) > 1:
        for probe, results in shift_results.items():
            _print_effective_robustness(probe, results, a.out)
    return 0


def _print_effective_robustness(probe: str, results: list, out: str | None) -> None:
    """§3.3 across models: each model's zero-shot point against the logit-space trend of the reference
    family (every model's linear probe; analysis.robustness.effective_robustness_of)."""
    from clipkit.analysis.robustness import effective_robustness_of
    try:
        er = effective_robustness_of(results)
    except ValueError as e:   # too few points with distinct ID accuracies: say so, keep the per-model results
        print(f"{probe}: effective robustness not computed: {e}")
        return
    ref = er.attrs.get("reference", "the reference")
    print(f"{probe}: effective robustness against the trend of "
          f"{ref if isinstance(ref, str) else ', '.join(ref)} (CLIP §3.3)")
    print(er.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if out:
        from clipkit.core.files import atomic_write_text
        atomic_write_text(Path(out) / f"{probe}.effective_robustness.csv", er.to_csv(index=False))


def eval_main(argv=None) -> int:
    """`clipkit eval`: retrieval on held-out synthetic scenes; the arguments and the model spec are
    checked before the model loads."""
    p = Parser(prog="clipkit eval", description="Caption<->image retrieval on held-out "
               "synthetic scenes (recall@k, with the chance level).")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model spec (default {DEFAULT_MODEL})")
    p.add_argument("--n", type=int, default=500, help="held-out scenes (default 500)")
    p.add_argument("--seed", type=int, default=None,
                   help="corpus seed of the held-out scenes (default: the held-out seed; training uses the "
                        "run's --seed, default 0: do not evaluate on that)")
    p.add_argument("--out", default=None, help="also write the metrics to OUT/retrieval.json")
    a = p.parse_args(argv)
    if a.n < 1:
        p.error(f"--n must be >= 1, got {a.n}")
    out = ensure_writable_dir(a.out) if a.out else None
    spec = check_spec(a.model)   # no torch yet, unless the spec has a pretrained tag (open_clip's table)
    from clipkit.models import load_model   # imports torch
    from clipkit.evaluate.synthetic import HELD_OUT_SEED, synthetic_retrieval
    model, preprocess, tokenizer = load_model(spec)
    metrics = synthetic_retrieval(model, preprocess, tokenizer, n=a.n,
                                  seed=HELD_OUT_SEED if a.seed is None else a.seed)
    print(json.dumps(metrics, indent=2))
    if out:
        from clipkit.core.files import atomic_write_json
        print(f"wrote {atomic_write_json(out / 'retrieval.json', {'model': a.model, 'metrics': metrics})}",
              file=sys.stderr)
    return 0


def train_main(argv=None) -> int:
    """`clipkit train ...` / `torchrun ... -m clipkit train ...`: the config from flags and YAML, the
    evaluation hook (here, not in the loop: training never imports the probes), then the loop."""
    import os
    from clipkit.core.modelspec import ModelSpecError, architectures, unknown_arch
    from clipkit.train.config import TrainConfig
    cfg = TrainConfig.from_argv(argv)         # no torch yet: a usage error is one line, at once
    if cfg.model not in architectures():      # a misspelt --model too, before torch (the loop would refuse it later)
        raise ModelSpecError(unknown_arch(cfg.model))
    ensure_writable_dir(cfg.out)
    from clipkit.train.loop import TrainingInterrupted, train
    hooks = []
    if cfg.eval_every:
        from clipkit.probes.hooks import EvalHook
        hooks.append(EvalHook(cfg.model, cfg.eval_every, cfg.eval_n))
    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        out = train(cfg, hooks)
    except TrainingInterrupted as e:          # SIGINT/SIGTERM: the checkpoint is saved; say how to go on
        if main_rank:
            print(f"clipkit train: {e}", file=sys.stderr)
        return e.exit_code
    if main_rank:
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
        print(f"clipkit: unknown command {cmd!r}{_did_you_mean(cmd, COMMANDS)}; commands: "
              f"{', '.join(COMMANDS)} (`clipkit --help`)", file=sys.stderr)
        return 2
    try:
        if cmd == "report":
            _check_report_out(rest)
        return run(rest)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        # clipkit's errors say what is wrong and how to fix it; a traceback adds nothing for users
        print(f"clipkit {cmd}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:   # outside a training loop (which saves and says how to go on): nothing to save
        print(f"clipkit {cmd}: interrupted", file=sys.stderr)
        return 130


def _check_report_out(argv: list[str]) -> None:
    """`clipkit report --out DIR` (default reports/): create and check DIR before the report runner
    starts a notebook."""
    if any(a in ("-h", "--help") for a in argv):
        return
    p = Parser(prog="clipkit report", add_help=False, allow_abbrev=False)
    p.add_argument("--out", default="reports")
    ensure_writable_dir(p.parse_known_args(argv)[0].out)


if __name__ == "__main__":
    sys.exit(main())
