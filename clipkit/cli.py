"""`clipkit train | probe | eval | report` — thin wrappers over the library."""
from __future__ import annotations

import argparse
import json
import sys

USAGE = """usage: clipkit COMMAND [ARGS]

commands:
  train    train a CLIP model contrastively (see `clipkit train --help`)
  probe    run probe specs on a model:  clipkit probe --model SPEC [--probe counting ...] [--out DIR]
  eval     retrieval on held-out synthetic scenes:  clipkit eval --model SPEC [--n 500]
  report   execute the probe notebooks into reports/:  clipkit report --model SPEC [--model SPEC ...]
"""


def probe_main(argv=None) -> int:
    from clipkit.models import DEFAULT_MODEL, load_model
    from clipkit.probes import load_any, run_any
    p = argparse.ArgumentParser(prog="clipkit probe", description="Run probe specs (probes/*.yaml) on a model.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model spec (see clipkit.models)")
    p.add_argument("--probe", action="append", help="spec name in probes/ or a YAML path (repeatable; "
                   "any kind: caption choice, fine-grained, shift; default: counting and spatial)")
    p.add_argument("--n", type=int, default=None, help="override the number of items")
    p.add_argument("--seed", type=int, default=None, help="override the item seed")
    p.add_argument("--out", default=None, help="write <probe>.csv and <probe>.json here")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    specs = [load_any(s, n=a.n, seed=a.seed) for s in (a.probe or ["counting", "spatial"])]
    model, preprocess, tokenizer = load_model(a.model, device=a.device)
    for spec in specs:
        r = run_any(spec, model, preprocess, tokenizer, model_name=a.model)
        s = r.metrics()
        print(f"{spec.name:24s} acc {s['accuracy']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] "
              f"chance {s['chance']:.3f} n {s['n']} ({s['verdict']})")
        for f, df in getattr(r, "breakdowns", {}).items():
            print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        if a.out:
            r.save(a.out)
    return 0


def eval_main(argv=None) -> int:
    from clipkit.models import DEFAULT_MODEL, load_model
    from clipkit.evaluate.synthetic import synthetic_retrieval
    p = argparse.ArgumentParser(prog="clipkit eval", description="Caption<->image retrieval on held-out "
                                "synthetic scenes (recall@k, with the chance level).")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--n", type=int, default=500, help="held-out scenes")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    model, preprocess, tokenizer = load_model(a.model)
    print(json.dumps(synthetic_retrieval(model, preprocess, tokenizer, n=a.n, seed=a.seed), indent=2))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        from clipkit.train import main as run
    elif cmd == "probe":
        run = probe_main
    elif cmd == "eval":
        run = eval_main
    elif cmd == "report":
        from clipkit.report import main as run
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
