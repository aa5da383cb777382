"""What the sine costs in a SIREN step on this machine: XLA's `jnp.sin` vs `inr.layers.sin`.

A 4-layer width-64 SIREN (w0 = 30), forward + backward, vmapped over 32 subjects x
4096 points, timed with `jnp.sin`, with the fused polynomial `inr.layers.sin`, and with
the identity (the matmuls alone); prints milliseconds and GFLOP/s of the matmuls.

    python benchmarks/sine.py [--subjects 32 --points 4096 --width 64]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _common import print_results  # noqa: E402

from longbrain_jax.inr import layers  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=32)
    ap.add_argument("--points", type=int, default=4096)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    n, p, w, depth = args.subjects, args.points, args.width, args.layers
    weights = jax.random.normal(jax.random.key(0), (n, depth, w, w)) * 0.01
    x = jax.random.normal(jax.random.key(1), (n, p, w))
    flops = 3 * 2 * n * p * w * w * depth  # forward + backward of the matmuls

    def step(act):
        def loss(ws, h):
            for k in range(depth):
                h = act(30.0 * (h @ ws[k]))
            return jnp.mean(h**2)

        return jax.jit(jax.vmap(jax.grad(loss)))

    rows, record = [], {"args": vars(args), "backend": jax.default_backend()}
    for name, act in (("jnp.sin", jnp.sin), ("inr.layers.sin", layers.sin), ("identity (matmuls only)", lambda z: z)):
        f = step(act)
        jax.block_until_ready(f(weights, x))
        best = math.inf
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(f(weights, x))
            best = min(best, time.perf_counter() - start)
        record[name] = {"ms": 1e3 * best, "gflops": flops / best / 1e9}
        rows.append((name, f"{1e3 * best:.0f} ms, {flops / best / 1e9:.1f} GFLOP/s"))
    print_results(f"SIREN step, {n} subjects x {p} points, width {w}, {depth} layers ({jax.default_backend()})", rows, record)


if __name__ == "__main__":
    main()
