"""Stage 1 of the deformation diffusion model: which SVF settings carry the true regional volume change.

The diffusion model learns only what stage 1's registrations carry. This simulates a paired
cohort (`--anatomies` anatomies x healthy / dementia-like twin, regular ages 50-75, 2D at
3 mm as in `benchmarks/diffusion.py`), registers every follow-up to its baseline under each
setting (`svf.register_cohort`), and compares per structure (hippocampus, lateral
ventricles, cortical GM, cerebral WM) the volume change the SVFs carry
(`diffusion.regional_rates`: the soft volume of the baseline's structure carried by each
frame's map, % per year) with the true label maps' (`diffusion.true_rates`): the mean over
subjects, the correlation across subjects, and the dementia-minus-healthy difference.

    python benchmarks/svf_settings.py
    python benchmarks/svf_settings.py --clean --settings "default,similarity=ssd;smooth_weight=0.003"
    python benchmarks/svf_settings.py --settings "smooth_weight=0.0003;steps=800;learning_rate=0.01"

A setting is `default` or `;`-separated `SVFConfig` fields (`name=value`), settings are
separated by commas.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import print_results  # noqa: E402
from diffusion import PAIRED_SEED, SCORED, real_rates, simulate, true_rates  # noqa: E402

from longbrain_jax.diffusion import SVFConfig, svf  # noqa: E402
from longbrain_jax.simulate.scanner import ScannerConfig  # noqa: E402


def parse_setting(text: str) -> SVFConfig:
    """`default` or `field=value;field=value` -> SVFConfig (values typed as the field's default)."""
    if text == "default":
        return SVFConfig()
    fields = {f.name: type(f.default) for f in dataclasses.fields(SVFConfig)}
    values = {}
    for item in text.split(";"):
        name, _, value = item.partition("=")
        if name not in fields:
            raise SystemExit(f"unknown SVFConfig field {name!r} in setting {text!r}; fields: {', '.join(fields)}")
        values[name] = fields[name](value)
    return SVFConfig(**values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--anatomies", type=int, default=6, help="anatomies, each as a healthy and a dementia-like twin")
    p.add_argument("--settings", default="default,similarity=ssd;smooth_weight=0.003,smooth_weight=0.003")
    p.add_argument("--clean", action="store_true", help="no scanner noise or bias field")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    scanner = ScannerConfig()
    sim = argparse.Namespace(resolution=3.0, dim=2, snr=1000.0 if args.clean else scanner.snr, bias_sd=0.0 if args.clean else scanner.bias_sd)
    settings = {text: parse_setting(text) for text in args.settings.split(",")}
    with tempfile.TemporaryDirectory() as tmp:
        _, cohort = simulate(Path(tmp) / "paired", sim, num_subjects=args.anatomies, paired=True, sampling="regular", seed=args.seed + PAIRED_SEED)
        rows, record = compare(cohort, settings, args.clean)
    print_results("Stage 1 SVF settings: regional volume change carried against the truth", rows, record)


def compare(cohort, settings: dict[str, SVFConfig], clean: bool) -> tuple[list, dict]:
    """(table rows, record) of every setting's carried regional rates against the truth on `cohort`."""
    truth = true_rates(cohort)
    dementia = np.asarray(cohort.groups) == "dementia"
    record = {"subjects": cohort.num_subjects, "clean": clean, "true": {}, "settings": {}}
    rows = []
    for j, s in enumerate(SCORED):
        record["true"][s] = {"mean": float(truth[:, j].mean()), "dementia_minus_healthy": float(truth[dementia, j].mean() - truth[~dementia, j].mean())}
        rows.append((f"truth: {s}", f"{truth[:, j].mean():+7.3f} %/yr  dementia - healthy {record['true'][s]['dementia_minus_healthy']:+.3f}"))
    for text, cfg in settings.items():
        start = time.perf_counter()
        velocities, valid = svf.register_cohort(cohort.volumes, cohort.mask, cfg)
        seconds = time.perf_counter() - start
        rates = real_rates(velocities, valid, cohort, cfg)
        entry = {"seconds_per_pair": seconds / max(int(valid.sum()), 1)}
        for j, s in enumerate(SCORED):
            entry[s] = {"mean": float(rates[:, j].mean()), "correlation": float(np.corrcoef(truth[:, j], rates[:, j])[0, 1]),
                        "dementia_minus_healthy": float(rates[dementia, j].mean() - rates[~dementia, j].mean())}  # fmt: skip
            rows.append((f"{text}: {s}", f"{rates[:, j].mean():+7.3f} %/yr  r {entry[s]['correlation']:+.2f}  "
                                         f"dementia - healthy {entry[s]['dementia_minus_healthy']:+.3f}"))  # fmt: skip
        record["settings"][text] = entry
    return rows, record


if __name__ == "__main__":
    main()
