"""Blocks of steps in one compiled loop against one step per compiled call, for every CNN trainer.

XLA:CPU runs convolutions inside a loop body (`lax.scan`, `fori_loop`) several times slower
than the same convolutions called alone (jax-ml/jax#12868), so on the CPU the engine's
`block_steps` gives convolutional trainers one step per call. This script measures, side
by side in one process on the same data, each trainer with blocks of `--block` steps and
with one step per call (same steps, same keys), and reports the ratio and how far the two
trained parameters ended apart (float32 reduction order differs between the programs;
training amplifies it).

    python benchmarks/compiled_loops.py [--size 48 --steps 20 --block 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import print_results  # noqa: E402

from longbrain_jax import noder  # noqa: E402
from longbrain_jax import segmenter as sg  # noqa: E402
from longbrain_jax.latent import autoencoder as ae  # noqa: E402


def _timed(fn, steps: int) -> tuple[float, object]:
    fn()  # compile
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) / steps, out


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


def trainers(size: int, steps: int):
    """(name, run(steps_per_call) -> params) of each trainer on 2D scans of size x size."""
    rng = np.random.default_rng(0)
    x = np.tanh(rng.normal(size=(24, size, size))).astype(np.float32)
    ae_cfg = ae.AutoencoderConfig(ndim=2, channels=(8, 16, 32), discriminator_channels=(8, 16, 16), perceptual_channels=(8, 16), steps=steps,
                                  adversarial_start=steps // 2, batch_size=4)  # fmt: skip
    yield "autoencoder (MRExtrap)", lambda spc: ae.train_autoencoder(x, ae_cfg, steps_per_call=spc)[0]
    labels = rng.choice([0, 2, 3, 4, 17, 41], size=x.shape).astype(np.int32)
    seg_cfg = sg.SegmenterConfig(channels=(8, 16, 32), steps=steps)
    yield "segmenter U-Net", lambda spc: sg.train_segmenter(x, labels, seg_cfg, steps_per_call=spc)[0]
    vols, times, obs = np.stack([x[:3], x[3:6]]), np.tile(np.array([0.0, 1.0, 2.0], np.float32), (2, 1)), np.ones((2, 3), bool)
    noder_cfg = dataclasses.replace(noder.NODERConfig(), iterations=steps)
    yield "NODER (ODE solve inside)", lambda spc: noder.fit_cohort(vols, times, obs, noder_cfg, steps_per_call=spc)[0]


def sfcn(size: int, steps: int) -> dict:
    """SFCN's epoch scan against its per-step calls (the classifier's two paths)."""
    from longbrain_jax import classifier as clf
    from longbrain_jax.baselines.sfcn import SFCN
    from longbrain_jax.engine.training import init_state

    rng = np.random.default_rng(1)
    model, x = SFCN((8, 16, 32, 32)), jnp.asarray(rng.normal(size=(32, size, size, 4)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 2, 32).astype(np.int32))
    var = clf._init(jax.random.split(jax.random.key(0), 1), x[:1], model=model)  # one model: a leading axis of 1
    params, state = var["params"], {k: v for k, v in var.items() if k != "params"}
    statics = {"model": model, "peak": 1e-3, "weight_decay": 1e-4}
    warmup, total = jnp.array([30], jnp.int32), jnp.array([100], jnp.int32)
    batches, w = jnp.asarray(rng.integers(0, 32, (steps, 1, 4))), jnp.ones((steps, 1, 4), jnp.float32)
    keys = jax.random.split(jax.random.key(1), steps)[:, None]
    numbers, active = jnp.arange(steps, dtype=jnp.int32)[:, None], jnp.ones((steps, 1), bool)
    fresh = lambda: jax.vmap(lambda p: init_state(p, clf._optimizer(0.0, 1e-4)))(params)  # noqa: E731

    def epoch():
        out = clf._train_epoch(fresh(), state, x, y, batches, w, keys, numbers, active, warmup, total, shared=True, **statics)
        return jax.block_until_ready(out[0].params)

    def per_step():
        t, s = fresh(), state
        for b in range(steps):
            t, s, _ = clf._train_step(t, s, x[batches[b]], y[batches[b]], w[b], keys[b], numbers[b], active[b], warmup, total, **statics)
        return jax.block_until_ready(t.params)

    (loop, a), (one, b) = _timed(epoch, steps), _timed(per_step, steps)
    return {"loop_ms": 1e3 * loop, "one_ms": 1e3 * one, "ratio": loop / one, "max_param_diff": _max_diff(a, b)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=48, help="2D scan edge (voxels)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--block", type=int, default=20, help="steps per compiled loop")
    args = ap.parse_args()
    record, rows = {"backend": jax.default_backend(), "size": args.size, "steps": args.steps, "block": args.block}, []
    for name, run in trainers(args.size, args.steps):
        (loop, a), (one, b) = _timed(lambda run=run: run(args.block), args.steps), _timed(lambda run=run: run(1), args.steps)
        record[name] = r = {"loop_ms": 1e3 * loop, "one_ms": 1e3 * one, "ratio": loop / one, "max_param_diff": _max_diff(a, b)}
        rows.append((name, f"loop {r['loop_ms']:.0f} ms/step, one per call {r['one_ms']:.0f} ms/step: loop/one {r['ratio']:.1f}x "
                           f"(params apart by {r['max_param_diff']:.1e})"))  # fmt: skip
    record["SFCN"] = r = sfcn(args.size, args.steps)
    rows.append(("SFCN (classifier)", f"epoch scan {r['loop_ms']:.0f} ms/step, one per call {r['one_ms']:.0f} ms/step: loop/one {r['ratio']:.1f}x "
                                      f"(params apart by {r['max_param_diff']:.1e})"))  # fmt: skip
    print_results(f"Compiled loops against one step per call ({record['backend']}, {args.size}x{args.size}, {args.steps} steps)", rows, record)


if __name__ == "__main__":
    main()
