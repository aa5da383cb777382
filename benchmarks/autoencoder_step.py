"""The autoencoder's training step by phase, and its discriminator update inside and outside a `lax.cond`.

MRExtrap's autoencoder trains without its adversarial term for `adversarial_start` steps and
with it after. `latent.autoencoder.train_block` compiles one program per phase; before, one
program held both, with the discriminator's update behind a traced switch (`lax.cond`), where
XLA:CPU runs convolutions off its fast path. This script times, in one process on the same
state and scans (2 per batch, channels 8, 16, 32, the default discriminator and perceptual
widths): the step of each phase, and the discriminator's update compiled alone and inside a
`lax.cond` whose switch is on (what every adversarial step ran before).

    python benchmarks/autoencoder_step.py [--shape 60x72x60] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _common import compiled_seconds, print_results  # noqa: E402

from longbrain_jax.latent import autoencoder as ae  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="60x72x60", help="spatial grid, e.g. 60x72x60 (3 mm) or 40x48x40")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    shape = tuple(int(n) for n in args.shape.split("x"))
    cfg = ae.AutoencoderConfig(ndim=len(shape), channels=(8, 16, 32), batch_size=2)
    state = ae.init_state(jax.random.key(0), cfg, shape)
    scans = jax.random.uniform(jax.random.key(1), (2, *shape), minval=-1.0, maxval=1.0)
    key = jax.random.key(2)
    real = ae.pad_to_multiple(scans, cfg.factor)
    fake = real * 0.9
    kept = lambda s: (s.params["discriminator"], s.disc_opt_state, jnp.zeros(()))  # noqa: E731
    seconds = {
        "warm_up_step_s": compiled_seconds(lambda s, x: ae.train_step(s, x, key, False, cfg=cfg), state, scans, repeats=args.repeats),
        "adversarial_step_s": compiled_seconds(lambda s, x: ae.train_step(s, x, key, True, cfg=cfg), state, scans, repeats=args.repeats),
        "discriminator_update_s": compiled_seconds(lambda s, r, f: ae.discriminator_update(s, r, f, cfg), state, real, fake, repeats=args.repeats),
        "discriminator_update_in_cond_s": compiled_seconds(
            lambda s, r, f, on: jax.lax.cond(on, lambda: ae.discriminator_update(s, r, f, cfg), lambda: kept(s)), state, real, fake, jnp.bool_(True),
            repeats=args.repeats),
    }  # fmt: skip
    record = {"backend": jax.default_backend(), "shape": list(shape), **seconds}
    rows = [
        ("warm-up step (no adversarial term)", f"{seconds['warm_up_step_s']:.2f} s"),
        ("adversarial step (its own program)", f"{seconds['adversarial_step_s']:.2f} s"),
        ("discriminator update, compiled alone", f"{seconds['discriminator_update_s']:.2f} s"),
        ("discriminator update inside lax.cond (switch on)", f"{seconds['discriminator_update_in_cond_s']:.2f} s "
                                                             f"({seconds['discriminator_update_in_cond_s'] / seconds['discriminator_update_s']:.1f}x)"),
    ]  # fmt: skip
    print_results(f"Autoencoder training step, 2 scans ({record['backend']}, {args.shape})", rows, record)
    return record


if __name__ == "__main__":
    main()
