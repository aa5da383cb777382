"""The k-fold protocol's classifiers trained one run at a time against all runs in one vmapped program.

`classifier.train_classifiers` trains a method's runs (the paper's split and every k-fold run) in
one program, as many as the memory budget holds. This script trains the same runs both ways, side
by side in one process, for each kind of classifier of the experiment (the token encoder, logistic
regression on flat weights standardised per run, SFCN on stacked 3D scans), on random inputs of the
experiment's shapes (learning is not the point: time and agreement are), and prints seconds per
protocol, the ratio and how far the two ways' predicted probabilities are apart. Each way runs
twice and the second is timed (the first compiles).

    python benchmarks/kfold_batching.py
    python benchmarks/kfold_batching.py --subjects 160 --runs 6 --epochs 30 --encoder-widths 512,1024,2048 --head 1024
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_results  # noqa: E402


def cases(args: argparse.Namespace, rng: np.random.Generator, runs: list[np.ndarray]) -> dict:
    """(model, inputs) of each classifier: tokens, flat weights (standardised on each run's rows), stacked scans."""
    from longbrain_jax.baselines.sfcn import SFCN
    from longbrain_jax.classification import standardise
    from longbrain_jax.weightspace.models import LinearClassifier, TokenEncoderClassifier

    n = args.subjects
    widths = tuple(int(w) for w in args.encoder_widths.split(","))
    tokens = rng.normal(size=(n, args.tokens, args.token_dim)).astype(np.float32)
    flat = rng.normal(size=(n, args.flat)).astype(np.float32)
    scans = rng.normal(size=(n, *(args.scan,) * 3, 5)).astype(np.float32)
    sfcn = SFCN(tuple(int(c) for c in args.sfcn_channels.split(",")))
    return {
        "token encoder": (TokenEncoderClassifier(widths, args.head), tokens),
        "logistic (per-run inputs)": (LinearClassifier(), lambda i: standardise(flat, runs[i])),
        "SFCN": (sfcn, scans),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=120)
    parser.add_argument("--runs", type=int, default=6, help="The split and 5 folds.")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=128, help="Tokens per subject (neurons of the stream).")
    parser.add_argument("--token-dim", type=int, default=129)
    parser.add_argument("--encoder-widths", default="128,256,512")
    parser.add_argument("--head", type=int, default=256)
    parser.add_argument("--flat", type=int, default=16512)
    parser.add_argument("--scan", type=int, default=24, help="Side of the cubic scans SFCN reads.")
    parser.add_argument("--sfcn-channels", default="8,16,32,32,32")
    parser.add_argument("--only", default="", help="Comma-separated case names (default: all).")
    args = parser.parse_args()

    from longbrain_jax.classifier import TrainConfig, predict_proba, train_classifiers

    rng = np.random.default_rng(0)
    y = (np.arange(args.subjects) % 2).astype(np.int32)
    runs = [np.sort(rng.choice(args.subjects, int(args.subjects * share), replace=False)) for share in np.linspace(0.66, 0.8, args.runs)]
    keys = [jax.random.key(i) for i in range(args.runs)]
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, learning_rate=1e-3)
    record = {"subjects": args.subjects, "runs": args.runs, "epochs": args.epochs, "batch": args.batch, "cases": {}}
    rows = []
    only = set(filter(None, args.only.split(",")))
    for name, (model, x) in cases(args, rng, runs).items():
        if only and name not in only:
            continue
        seconds, trained = {}, {}
        for together in (1, args.runs, 1, args.runs):  # the second of each is timed
            start = time.perf_counter()
            trained[together] = train_classifiers(model, x, y, cfg, keys, runs, together=together)
            seconds[together] = time.perf_counter() - start
        inputs = [x(i) if callable(x) else x for i in range(args.runs)]
        apart = max(float(np.max(np.abs(predict_proba(model, a.variables, xi) - predict_proba(model, b.variables, xi))))
                    for a, b, xi in zip(trained[1], trained[args.runs], inputs, strict=True))  # fmt: skip
        one, batched = seconds[1], seconds[args.runs]
        record["cases"][name] = {"one_at_a_time_s": round(one, 2), "together_s": round(batched, 2), "speedup": round(one / batched, 2),
                                 "max_probability_apart": apart}  # fmt: skip
        rows.append((name, f"one at a time {one:8.2f} s   together {batched:8.2f} s   x{one / batched:5.2f}   probabilities apart {apart:.1e}"))
        print(f"{name}: {rows[-1][1]}", flush=True)
    print_results(f"k-fold batching: {args.runs} runs x {args.epochs} epochs, {args.subjects} subjects, {jax.devices()[0].platform}", rows, record)


if __name__ == "__main__":
    main()
