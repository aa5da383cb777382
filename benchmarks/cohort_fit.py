"""Cohort fitting throughput: longbrain's vmapped program vs a PyTorch per-subject loop.

In one process, on the same machine and data:

1. the longbrain fine-tuning program (`fit.train.finetune_block`: every subject of a
   cohort in one jit-compiled, vmapped program) for N subjects;
2. the same network (spatiotemporal INR, same widths, depths and activations, same
   foreground-weighted sampling, AdamW, same steps) trained subject after subject in
   PyTorch (`pip install -e ".[bench-torch]"`);
3. the machine's matmul peak, measured here: a large square matmul, and a batched
   matmul of the network's own shapes (N, points, W) x (N, W, W);
4. scaling of the longbrain program over N = 1, 2, 4, ..., --max-subjects.

Prints subject-steps/s for both and their ratio (goal on a 2-core CPU for a width-64
SIREN cohort of N = 32: >= 3x), achieved GFLOP/s of the network's matmuls against
both peaks (goal >= 70% of the measured matmul peak), and peak memory (the process's
peak RSS during each phase, reset between phases). On a GPU, pass --paper for the
paper's configuration (width 512, WIRE/ReLU, 8 layers, 100 steps, 1% of voxels).

    python benchmarks/cohort_fit.py [--subjects 32 --width 64 --points 4096 --steps 20]
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import peak_rss_mib, print_results  # noqa: E402

from longbrain_jax.engine import sharding  # noqa: E402
from longbrain_jax.engine.training import init_state  # noqa: E402
from longbrain_jax.fit.sampling import prepare_subjects  # noqa: E402
from longbrain_jax.fit.train import Sampling, StageConfig, finetune_block  # noqa: E402
from longbrain_jax.inr import INRConfig  # noqa: E402
from longbrain_jax.inr import spatiotemporal as st  # noqa: E402


def reset_peak_rss() -> None:
    """Reset this process's peak RSS (Linux: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def make_data(n: int, shape: tuple[int, ...], scans: int, seed: int = 0):
    """Smooth random 'brains' (foreground ellipsoid, background -1), all scans observed."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = np.sum((grid / 0.8) ** 2, axis=0) < 1
    base = gaussian_filter(rng.standard_normal(shape), 2.0)
    base = np.where(inside, np.tanh(base / base.std()) * 0.8, -1.0).astype(np.float32)
    volumes = np.stack([np.stack([base * rng.uniform(0.95, 1.05) for _ in range(scans)]) for _ in range(n)])
    times = np.tile(np.linspace(-1, 1, scans, dtype=np.float32), (n, 1))
    return volumes, times, prepare_subjects(volumes, times, np.ones((n, scans), bool), threshold=-0.9)


# -- longbrain ---------------------------------------------------------------------------
def time_longbrain(n: int, cfg: INRConfig, stage: StageConfig, sampling: Sampling, data, repeats: int) -> dict:
    mesh = sharding.subject_mesh(jax.devices()[: math.gcd(n, jax.device_count())])
    data = sharding.shard_subjects(jax.tree_util.tree_map(lambda x: np.asarray(x[:n]), data), mesh)
    theta = st.init(jax.random.key(0), cfg)
    stacked = sharding.shard_subjects(jax.tree_util.tree_map(lambda x: np.broadcast_to(x, (n, *x.shape)), theta), mesh)
    fresh = jax.jit(jax.vmap(lambda p: init_state(p, stage.optimizer())))
    ids = sharding.shard_subjects(np.arange(n, dtype=np.int32), mesh)
    run = lambda s: finetune_block(s, data, ids, jnp.int32(0), jnp.int32(0), num_steps=stage.steps, cfg=cfg, sampling=sampling, stage=stage)  # noqa: E731
    reset_peak_rss()
    start = time.perf_counter()
    jax.block_until_ready(run(fresh(stacked)))
    compile_s = time.perf_counter() - start
    best = math.inf
    for _ in range(repeats):
        state = jax.block_until_ready(fresh(stacked))
        start = time.perf_counter()
        jax.block_until_ready(run(state))
        best = min(best, time.perf_counter() - start)
    return {"subject_steps_per_s": n * stage.steps / best, "first_call_s": compile_s, "seconds": best, "peak_rss_mib": peak_rss_mib()}


# -- PyTorch reference ----------------------------------------------------------------------
def time_torch(n: int, cfg: INRConfig, stage: StageConfig, sampling: Sampling, data) -> dict:
    import torch

    act = {
        "sine": lambda lin: (lambda h: torch.sin(cfg.w0 * lin[0](h))),
        "relu": lambda lin: (lambda h: torch.relu(lin[0](h))),
        "wire": lambda lin: (lambda h: torch.cos(cfg.w0 * lin[0](h)) * torch.exp(-((cfg.s0 * lin[1](h)) ** 2))),
    }

    class Layer(torch.nn.Module):
        def __init__(self, n_in, n_out, kind):
            super().__init__()
            self.lin = torch.nn.ModuleList([torch.nn.Linear(n_in, n_out) for _ in range(2 if kind == "wire" else 1)])
            self.fn = act[kind](self.lin)

        def forward(self, h):
            return self.fn(h)

    class INR(torch.nn.Module):
        def __init__(self):
            super().__init__()
            w, k = cfg.width, cfg.stream_layers - 1
            self.space = torch.nn.ModuleList([Layer(cfg.ndim, w, cfg.spatial_activation)] + [Layer(w, w, cfg.spatial_activation) for _ in range(k)])
            self.time = torch.nn.ModuleList([Layer(1, w, cfg.temporal_activation)] + [Layer(w, w, cfg.temporal_activation) for _ in range(k)])
            self.com = torch.nn.ModuleList([Layer(w, w, cfg.combined_activation) for _ in range(cfg.combined_layers)])
            self.out = torch.nn.Linear(w, 1)

        @staticmethod
        def stream(layers, h):
            h = layers[0](h)
            for layer in layers[1:]:
                h = 0.5 * (h + layer(h))
            return h

        def forward(self, x, times, index):
            h = self.stream(self.space, x) + self.stream(self.time, times[:, None])[index]
            for layer in self.com:
                h = 0.5 * (h + layer(h))
            return self.out(h)[:, 0]

    torch.manual_seed(0)
    volumes = [torch.from_numpy(np.asarray(data.volumes[i])) for i in range(n)]
    fg = [torch.from_numpy(np.asarray(data.foreground[i][: data.num_foreground[i]]).astype(np.int64)) for i in range(n)]
    times = torch.from_numpy(np.asarray(data.times[0]))
    shape, num_points = sampling.spatial_shape, sampling.num_points
    n_fg = round(sampling.foreground_fraction * num_points)
    t_max, v = volumes[0].shape
    strides = torch.tensor([int(np.prod(shape[d + 1 :])) for d in range(len(shape))])
    half = (torch.tensor(shape, dtype=torch.float32) - 1) / 2

    def one_subject(i):
        model = INR()
        opt = torch.optim.AdamW(model.parameters(), lr=stage.learning_rate, weight_decay=stage.weight_decay)
        for _ in range(stage.steps):
            flat = torch.cat([fg[i][torch.randint(len(fg[i]), (n_fg,))], torch.randint(t_max * v, (num_points - n_fg,))])
            scan, voxel = flat // v, flat % v
            coords = (voxel[:, None] // strides % torch.tensor(shape)).float() / half - 1
            loss = torch.mean((model(coords, times, scan) - volumes[i].reshape(-1)[flat]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()

    one_subject(0)  # warm-up
    reset_peak_rss()
    start = time.perf_counter()
    for i in range(n):
        one_subject(i)
    seconds = time.perf_counter() - start
    return {"subject_steps_per_s": n * stage.steps / seconds, "seconds": seconds, "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads()}


# -- peaks ---------------------------------------------------------------------------------------
def _best_time(fn, *args, repeats=5) -> float:
    jax.block_until_ready(fn(*args))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peaks(n: int, points: int, width: int) -> dict:
    size = 2048 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (size, size))
    square = 2 * size**3 / _best_time(jax.jit(lambda x: x @ x), a) / 1e9
    x = jax.random.normal(jax.random.key(1), (n, points, width))
    w = jax.random.normal(jax.random.key(2), (n, width, width))
    shaped = 2 * n * points * width * width / _best_time(jax.jit(lambda x, w: jnp.einsum("npk,nkw->npw", x, w)), x, w) / 1e9
    return {"square_gflops": square, "square_size": size, "layer_shaped_gflops": shaped}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--activations", default="sine,sine,sine", help="spatial,temporal,combined")
    ap.add_argument("--points", type=int, default=4096, help="points per subject-step")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=48, help="volume edge (voxels), 3D")
    ap.add_argument("--scans", type=int, default=4)
    ap.add_argument("--max-subjects", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--paper", action="store_true", help="width 512, WIRE/ReLU/WIRE, 100 steps, 1%% of voxels (GPU)")
    args = ap.parse_args()

    kinds = args.activations.split(",")
    shape = (args.size,) * 3
    if args.paper:
        kinds, args.width, args.steps = ["wire", "relu", "wire"], 512, 100
    cfg = INRConfig(ndim=3, width=args.width, spatial_activation=kinds[0], temporal_activation=kinds[1], combined_activation=kinds[2], w0=30.0 if kinds[0] == "sine" else 10.0)
    fraction = args.points / (math.prod(shape) * args.scans) if not args.paper else 0.01
    stage = StageConfig(steps=args.steps, learning_rate=1e-3, sample_fraction=fraction)
    sampling = Sampling(shape, stage.num_points(math.prod(shape), args.scans), 0.9)
    n_max = max(args.subjects, args.max_subjects)
    _, _, data = make_data(n_max, shape, args.scans)
    flops_step = 3 * st.flops_per_point(cfg) * sampling.num_points  # forward + backward ~ 3x forward

    record = {"machine": platform.processor() or platform.machine(), "backend": jax.default_backend(), "devices": jax.device_count(),
              "config": {"width": cfg.width, "activations": kinds, "stream_layers": cfg.stream_layers, "combined_layers": cfg.combined_layers,
                         "points_per_subject_step": sampling.num_points, "steps": args.steps, "volume": shape, "scans": args.scans}}  # fmt: skip
    peaks = matmul_peaks(args.subjects, sampling.num_points, cfg.width)
    ours = time_longbrain(args.subjects, cfg, stage, sampling, data, args.repeats)
    gflops = ours["subject_steps_per_s"] * flops_step / 1e9
    record.update(peaks=peaks, longbrain=ours, gflops=gflops)
    rows = [
        ("network", f"width {cfg.width}, {'/'.join(kinds)}, {cfg.stream_layers}+{cfg.combined_layers} layers, {sampling.num_points} points/subject-step"),
        (f"longbrain N={args.subjects}", f"{ours['subject_steps_per_s']:.1f} subject-steps/s (first call {ours['first_call_s']:.1f} s), peak RSS {ours['peak_rss_mib']:.0f} MiB"),
        ("achieved GFLOP/s (matmuls)", f"{gflops:.1f}"),
        (f"matmul peak {peaks['square_size']}^2", f"{peaks['square_gflops']:.1f} GFLOP/s -> {100 * gflops / peaks['square_gflops']:.0f}% (goal >= 70%)"),
        ("matmul peak, layer shapes", f"{peaks['layer_shaped_gflops']:.1f} GFLOP/s -> {100 * gflops / peaks['layer_shaped_gflops']:.0f}%"),
    ]
    if not args.no_torch:
        try:
            ref = time_torch(args.subjects, cfg, stage, sampling, data)
        except ImportError:
            rows.append(("PyTorch loop", "torch not installed (pip install -e '.[bench-torch]')"))
        else:
            record["torch"] = ref
            record["ratio"] = ours["subject_steps_per_s"] / ref["subject_steps_per_s"]
            rows.append((f"PyTorch loop N={args.subjects}", f"{ref['subject_steps_per_s']:.1f} subject-steps/s ({ref['threads']} threads), peak RSS {ref['peak_rss_mib']:.0f} MiB"))
            rows.append(("ratio longbrain / PyTorch", f"{record['ratio']:.2f}x (goal >= 3x)"))
    scaling = {}
    n = 1
    while n <= args.max_subjects:
        r = time_longbrain(n, cfg, stage, sampling, data, 1)
        scaling[n] = r
        rows.append((f"scaling N={n}", f"{r['subject_steps_per_s']:.1f} subject-steps/s, {r['subject_steps_per_s'] * flops_step / 1e9:.1f} GFLOP/s, peak RSS {r['peak_rss_mib']:.0f} MiB"))
        n *= 2
    record["scaling"] = scaling
    print_results(f"Cohort fitting throughput ({record['backend']}, {record['devices']} device(s))", rows, record)


if __name__ == "__main__":
    main()
