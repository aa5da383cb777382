"""The accelerator suite: the papers' configurations, timed on one device in one command (issue 22).

Each section runs in its own process (so each reports its own peak device memory) on
synthetic data of the papers' shapes, compiles once, then times steady-state steps:

- `fit`: cohort fine-tuning at the paper's INR (width 512, 5 + 3 layers, WIRE / ReLU /
  WIRE, 100 steps, 1% of voxels) on 3D 2 mm scans (91 x 109 x 91, 4 scans), a chunk of
  up to `--fit-chunk` subjects per program as the memory plan allows (the same plan as
  `longbrain fit`, its prediction shown beside the measured peak); seconds per step, and
  the whole fine-tuning of 450
  subjects projected from it (goal <= 15 min; the paper: about 3.75 h on an RTX 4090).
  The shared initialisation (theta*) is one more such program, not included.
- `register`: continuous-time registration at the paper's network (SIREN width 256, 5
  hidden layers; 12 patches of 12^3 per step) on the same grid, `--register-chunk`
  subjects vmapped; seconds per subject for our default 2,000 steps and for the paper's
  15,000 (90 epochs of 2,000 patches in batches of 12; the paper: about 90 min per
  subject on an A6000).
- `classify`: the inr2vec-style encoder at the paper's widths (512, 1024, 2048; head 1024)
  on all three streams' tokens of a width-512 INR, and SFCN on 3D 2 mm scans stacked as
  5 channels; training steps per second at `--batch` subjects.
- `diffusion`: the denoiser's training step (its default widths) on 4 frames of velocity
  fields on the 2x coarser grid; steps per second.

One JSON line and a table. `--dry-run` runs every section at tiny sizes in this process
(the test suite runs it, so the script cannot rot); its figures mean nothing.

    python benchmarks/gpu_suite.py            # on one accelerator: about 5-8 minutes
    python benchmarks/gpu_suite.py --dry-run  # any machine, under a minute
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import measure_in_child, peak_rss_mib, print_results  # noqa: E402

COHORT = 450  # subjects whose fine-tuning the fit section projects (the paper's cohort size)
PAPER_REGISTRATION_STEPS = 90 * 2000 // 12  # 90 epochs of 2,000 patches in batches of 12


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every size the suite runs at (the paper's, or tiny for `--dry-run`)."""

    shape: tuple[int, ...] = (91, 109, 91)  # 3D 2 mm MNI grid
    scans: int = 4
    inr_width: int = 512
    fit_chunk: int = 64
    fit_steps: int = 10
    register_width: int = 256
    register_chunk: int = 8
    register_steps: int = 20
    register_patches: tuple[int, int] = (12, 12)  # patches per step, edge in voxels (the paper's)
    encoder_widths: tuple[int, ...] = (512, 1024, 2048)
    encoder_head: int = 1024
    sfcn_channels: tuple[int, ...] = (32, 64, 128, 256, 256)
    batch: int = 16
    classify_steps: int = 20
    denoiser_channels: tuple[int, ...] = (32, 64)
    diffusion_batch: int = 8
    diffusion_steps: int = 10


DRY = Sizes(shape=(12, 14, 12), scans=3, inr_width=16, fit_chunk=2, fit_steps=2, register_width=16, register_chunk=2, register_steps=2, register_patches=(2, 4),
            encoder_widths=(8, 16), encoder_head=8, sfcn_channels=(4, 8), batch=2, classify_steps=2, denoiser_channels=(8, 8),
            diffusion_batch=2, diffusion_steps=2)  # fmt: skip


def device_peak_mib() -> float | None:
    """The device's peak allocated memory so far (None where the backend does not report it, as on the CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def _timed(run, state, steps: int) -> tuple[float, float, object]:
    """(first call seconds (compile + one block), steady seconds per step, state) of `run(state) -> state` doing `steps` steps."""
    start = time.perf_counter()
    state = jax.block_until_ready(run(state))
    first = time.perf_counter() - start
    start = time.perf_counter()
    state = jax.block_until_ready(run(state))
    return first, (time.perf_counter() - start) / steps, state


def _brains(n: int, shape: tuple[int, ...], scans: int, seed: int = 0) -> np.ndarray:
    """(n, scans, *shape) smooth random 'brains' in [-1, 1] (background -1), slightly different per scan."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = np.sum((grid / 0.8) ** 2, axis=0) < 1
    base = gaussian_filter(rng.standard_normal(shape), 2.0)
    base = np.where(inside, np.tanh(base / base.std()) * 0.8, -1.0).astype(np.float32)
    scale = rng.uniform(0.95, 1.05, (n, scans) + (1,) * len(shape)).astype(np.float32)
    return np.where(inside, base * scale, -1.0).astype(np.float32)


# -- sections (each returns its figures; run in a child process unless --dry-run) -------------------
def section_fit(sizes: Sizes) -> dict:
    from longbrain_jax.engine.training import init_state
    from longbrain_jax.fit.config import FitConfig
    from longbrain_jax.fit.plan import plan_chunk
    from longbrain_jax.fit.sampling import prepare_subjects
    from longbrain_jax.fit.train import Sampling, finetune_block
    from longbrain_jax.inr import INRConfig
    from longbrain_jax.inr import spatiotemporal as st
    from longbrain_jax.memory import Budget

    shape = sizes.shape
    cfg = FitConfig(inr=INRConfig(ndim=len(sizes.shape), width=sizes.inr_width), chunk_size=sizes.fit_chunk)  # the paper's INR and fine-tuning
    plan = plan_chunk(cfg, COHORT, sizes.scans, shape, 1, Budget.resolve())  # the chunk the memory budget allows, as `longbrain fit` plans it
    n, stage = plan.sizes["subjects per chunk"], cfg.finetune
    sampling = Sampling(shape, stage.num_points(math.prod(shape), sizes.scans), cfg.foreground_fraction)
    times = np.tile(np.linspace(-1, 1, sizes.scans, dtype=np.float32), (n, 1))
    data = jax.device_put(prepare_subjects(_brains(n, shape, sizes.scans), times, np.ones((n, sizes.scans), bool), threshold=-0.9))
    theta = st.init(jax.random.key(0), cfg.inr)
    state = jax.jit(jax.vmap(lambda p: init_state(p, stage.optimizer())))(jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), theta))
    ids = jnp.arange(n, dtype=jnp.int32)
    run = lambda s: finetune_block(s, data, ids, jnp.int32(0), jnp.int32(0), num_steps=sizes.fit_steps, cfg=cfg.inr, sampling=sampling, stage=stage)  # noqa: E731
    first, per_step, _ = _timed(run, state, sizes.fit_steps)
    projected = math.ceil(COHORT / n) * stage.steps * per_step
    return {"chunk": n, "planned_mib": plan.predicted_bytes / 2**20, "points_per_subject_step": sampling.num_points, "first_call_s": first,
            "s_per_step": per_step, "subject_steps_per_s": n / per_step, "projected_450_subjects_s": projected}  # fmt: skip


def section_register(sizes: Sizes) -> dict:
    from longbrain_jax.memory import Budget
    from longbrain_jax.registration import DisplacementConfig, RegistrationConfig
    from longbrain_jax.registration.cohort import plan_chunk
    from longbrain_jax.registration.train import init_states, registration_block

    cfg = RegistrationConfig(network=DisplacementConfig(ndim=len(sizes.shape), width=sizes.register_width), patches=sizes.register_patches[0],
                             patch_size=sizes.register_patches[1], chunk_size=sizes.register_chunk, steps_per_call=sizes.register_steps)  # fmt: skip
    plan = plan_chunk(cfg, COHORT, sizes.scans, sizes.shape, 1, Budget.resolve())
    n = plan.sizes["subjects per chunk"]
    volumes = jnp.asarray(_brains(n, sizes.shape, sizes.scans, seed=1))
    times = jnp.asarray(np.tile(np.arange(sizes.scans, dtype=np.float32) * 3.0, (n, 1)))
    observed = jnp.ones((n, sizes.scans), bool)
    args = (volumes, times, observed, jnp.arange(n, dtype=jnp.int32), jnp.int32(0), jnp.int32(0))
    run = lambda s: registration_block(s, *args, num_steps=sizes.register_steps, cfg=cfg)  # noqa: E731
    first, per_step, _ = _timed(run, init_states(cfg, n), sizes.register_steps)
    return {"chunk": n, "planned_mib": plan.predicted_bytes / 2**20, "first_call_s": first, "s_per_step": per_step,
            "s_per_subject_default_steps": per_step * cfg.steps / n, "s_per_subject_paper_steps": per_step * PAPER_REGISTRATION_STEPS / n,
            "default_steps": cfg.steps}  # fmt: skip


def _classifier_steps(model, x: np.ndarray, batch: int, steps: int) -> dict:
    from longbrain_jax import classifier as clf
    from longbrain_jax.engine.training import init_state

    variables = clf._init(jax.random.split(jax.random.key(0), 1), jnp.asarray(x[:1]), model=model)  # one model: a leading axis of 1
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    statics = {"model": model, "peak": 1e-3, "weight_decay": 1e-4}
    warmup, total = jnp.array([300], jnp.int32), jnp.array([1000], jnp.int32)
    train = jax.vmap(lambda p: init_state(p, clf._optimizer(0.0, 1e-4)))(params)
    xb, yb, wb = jnp.asarray(x[None, :batch]), jnp.asarray(np.arange(batch)[None] % 2, jnp.int32), jnp.ones((1, batch), jnp.float32)

    def run(carry):
        for i in range(steps):
            carry = clf._train_step(*carry, xb, yb, wb, jax.random.key(i)[None], jnp.array([i], jnp.int32), jnp.ones(1, bool), warmup, total,
                                    **statics)[:2]  # fmt: skip
        return carry

    first, per_step, _ = _timed(run, (train, state), steps)
    return {"first_call_s": first, "s_per_step": per_step, "steps_per_s": 1 / per_step}


def section_classify(sizes: Sizes) -> dict:
    from longbrain_jax.baselines.sfcn import SFCN
    from longbrain_jax.inr import INRConfig
    from longbrain_jax.inr import spatiotemporal as st
    from longbrain_jax.weightspace.models import TokenEncoderClassifier
    from longbrain_jax.weightspace.tokens import stream_tokens

    b = sizes.batch
    theta = st.init(jax.random.key(0), INRConfig(ndim=len(sizes.shape), width=sizes.inr_width))
    one = stream_tokens(jax.device_get(jax.tree_util.tree_map(lambda x: x[None], theta)), ("P_space", "P_time", "P_com"))
    tokens = np.repeat(one, b, axis=0) * np.random.default_rng(0).uniform(0.9, 1.1, (b, 1, 1)).astype(np.float32)
    encoder = _classifier_steps(TokenEncoderClassifier(sizes.encoder_widths, sizes.encoder_head), tokens, b, sizes.classify_steps)
    scans = np.moveaxis(_brains(b, sizes.shape, 5, seed=2), 1, -1)  # (B, *shape, 5): scans stacked as channels
    sfcn = _classifier_steps(SFCN(sizes.sfcn_channels), scans, b, sizes.classify_steps)
    return {"batch": b, "tokens": list(tokens.shape[1:]), "encoder": encoder, "sfcn": sfcn}


def section_diffusion(sizes: Sizes) -> dict:
    from longbrain_jax.diffusion.config import DiffusionConfig
    from longbrain_jax.diffusion.denoiser import DenoiserConfig
    from longbrain_jax.diffusion.model import Sequences, Vocabulary, _initial, baseline_features, train_block
    from longbrain_jax.diffusion.svf import SVFConfig, coarse_shape
    from longbrain_jax.engine.training import block_steps

    cfg = DiffusionConfig(denoiser=DenoiserConfig(channels=sizes.denoiser_channels), batch_size=sizes.diffusion_batch)
    vocab = Vocabulary(("dementia", "healthy"), ("F", "M"))
    coarse = tuple(coarse_shape(sizes.shape, SVFConfig().velocity_factor))
    n, frames = 2 * sizes.diffusion_batch, sizes.scans - 1
    rng = np.random.default_rng(3)
    seq = Sequences(
        frames=rng.standard_normal((n, frames, *coarse, len(sizes.shape))).astype(np.float32),
        frame_mask=np.ones((n, frames), bool),
        image=baseline_features(_brains(n, sizes.shape, 1, seed=3)[:, 0], coarse),
        cond_ids=np.stack([np.arange(n) % 2, np.arange(n) // 2 % 2], 1).astype(np.int32),
        ages=np.tile(70.0 + np.arange(1, frames + 1, dtype=np.float32), (n, 1)),
        intervals=np.tile(np.arange(1, frames + 1, dtype=np.float32), (n, 1)),
    )
    data = jax.tree_util.tree_map(jnp.asarray, seq)

    block = block_steps(50, convolutional=True)  # as `diffusion.model.train` runs it

    def run(state):
        for first in range(0, sizes.diffusion_steps, block):
            n = min(block, sizes.diffusion_steps - first)
            state, _ = train_block(state, data, jnp.int32(len(seq.frames)), jnp.int32(first), jnp.int32(n), cfg=cfg, vocab=vocab, batch=sizes.diffusion_batch, max_steps=block)
        return state

    first, per_step, _ = _timed(run, _initial(cfg, vocab, frames, coarse), sizes.diffusion_steps)
    return {"coarse_grid": list(coarse), "frames": frames, "batch": sizes.diffusion_batch, "first_call_s": first, "s_per_step": per_step,
            "steps_per_s": 1 / per_step}  # fmt: skip


SECTIONS = {"fit": section_fit, "register": section_register, "classify": section_classify, "diffusion": section_diffusion}


def _in_process(fn, sizes: Sizes) -> dict:
    start = time.perf_counter()
    out = fn(sizes)
    return {"seconds": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib(), **out}


def _with_memory(fn, sizes: Sizes) -> dict:
    out = fn(sizes)
    return {**out, "device_peak_mib": device_peak_mib()}


def _rows(name: str, r: dict) -> list[tuple[str, str]]:
    mem = f"peak device {r['device_peak_mib']:.0f} MiB" if r.get("device_peak_mib") is not None else f"peak RSS {r['peak_rss_mib']:.0f} MiB"
    if "planned_mib" in r:
        mem += f" (planned {r['planned_mib']:.0f} MiB)"
    if name == "fit":
        return [("fit: s per step (chunk)", f"{r['s_per_step']:.3f} s for {r['chunk']} subjects x {r['points_per_subject_step']} points "
                 f"({r['subject_steps_per_s']:.0f} subject-steps/s; first call {r['first_call_s']:.0f} s), {mem}"),
                (f"fit: {COHORT} subjects x 100 steps", f"{r['projected_450_subjects_s'] / 60:.1f} min projected (goal <= 15 min)")]  # fmt: skip
    if name == "register":
        return [("register: s per step (chunk)", f"{r['s_per_step']:.3f} s for {r['chunk']} subjects (first call {r['first_call_s']:.0f} s), {mem}"),
                ("register: s per subject", f"{r['s_per_subject_default_steps']:.0f} s at {r['default_steps']} steps, "
                 f"{r['s_per_subject_paper_steps'] / 60:.1f} min at the paper's {PAPER_REGISTRATION_STEPS} steps")]  # fmt: skip
    if name == "classify":
        return [("classify: encoder", f"{r['encoder']['steps_per_s']:.1f} steps/s at batch {r['batch']} of {r['tokens']} tokens, {mem}"),
                ("classify: SFCN", f"{r['sfcn']['steps_per_s']:.1f} steps/s at batch {r['batch']}")]  # fmt: skip
    return [("diffusion: training", f"{r['steps_per_s']:.2f} steps/s at batch {r['batch']}, {r['frames']} frames on {r['coarse_grid']}, {mem}")]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, in this process (figures mean nothing)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"some of {','.join(SECTIONS)}")
    ap.add_argument("--fit-chunk", type=int, help="most subjects per fitting program (default 64; fewer if the memory plan says so)")
    ap.add_argument("--register-chunk", type=int, help="most subjects per registration program (default 8; fewer if the plan says so)")
    args = ap.parse_args(argv)
    sizes = DRY if args.dry_run else Sizes()
    if args.fit_chunk:
        sizes = dataclasses.replace(sizes, fit_chunk=args.fit_chunk)
    if args.register_chunk:
        sizes = dataclasses.replace(sizes, register_chunk=args.register_chunk)
    names = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    record = {"machine": platform.processor() or platform.machine(), "backend": jax.default_backend(),
              "device": str(jax.local_devices()[0].device_kind), "dry_run": args.dry_run, "sizes": dataclasses.asdict(sizes)}  # fmt: skip
    rows = []
    for name in names:
        if args.dry_run:
            r = _in_process(SECTIONS[name], sizes)
        else:
            r = measure_in_child(_with_memory, SECTIONS[name], sizes)
        record[name] = r
        rows += _rows(name, r) + [(f"{name}: wall", f"{r['seconds']:.0f} s")]
    print_results(f"Accelerator suite ({record['backend']}, {record['device']}{', dry run' if args.dry_run else ''})", rows, record)
    return record


if __name__ == "__main__":
    main()
