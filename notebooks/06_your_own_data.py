# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. Bring your own data
#
# A longitudinal BIDS dataset as it comes from a study: clinical group names of its own
# (`Nondemented` / `Demented` / `Converted` here), follow-ups in a different head position
# at every visit, one broken file. The steps: validate (`inspect`), align every follow-up
# to its baseline (`align`), plan memory (`--memory-budget`), fit and classify with the
# study's group names, and where every output goes. Each step is the command you would
# type; here it runs through `click`'s test runner so the notebook shows its output.
#
# **Time:** about 2 minutes on 2 CPU cores (a stand-in dataset: 2D at 4 mm, 12 subjects).
# With your data: set `DATA` to your BIDS root and skip the first cell's simulation.

# %%
import csv
import os
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from click.testing import CliRunner

from longbrain_jax.cli import main
from longbrain_jax.io import read_bids
from longbrain_jax.simulate import ScannerConfig, SimulationConfig, simulate_cohort

SIZE = os.environ.get("LONGBRAIN_NOTEBOOK_SIZE", "small")  # "test": every cell with the fewest steps (the test suite)
few = SIZE == "test"
work = Path(tempfile.mkdtemp(prefix="longbrain-nb6-"))


def longbrain(*args, fails: bool = False) -> None:
    """Run `longbrain ARGS` and show what it prints (stdout and stderr), as in a terminal; stop the
    notebook if it does not succeed (or, with `fails`, if it does)."""
    print("$ longbrain " + " ".join(str(a) for a in args))
    result = CliRunner().invoke(main, [str(a) for a in args], prog_name="longbrain")
    print(result.output.rstrip())
    print(f"(exit status {result.exit_code})\n")
    if (result.exit_code != 0) != fails:
        raise RuntimeError(f"longbrain {args[0]} exited with {result.exit_code}") from result.exception


# A stand-in for your dataset: simulated scans with misaligned follow-ups (up to 5 degrees, 5 mm)
# and a study's own group names in participants.tsv.
DATA = simulate_cohort(work / "study", SimulationConfig(num_subjects=12, ndim=2, resolution_mm=4.0, chunk_size=8, seed=6,
                                                        scanner=ScannerConfig(rotation_deg=5.0, translation_mm=5.0)))  # fmt: skip
names = {"healthy": "Nondemented", "dementia": "Demented"}
with open(DATA / "participants.tsv") as f:
    rows = list(csv.DictReader(f, delimiter="\t"))
for k, r in enumerate(rows):
    r["group"] = "Converted" if k % 6 == 5 else names[r["group"]]
with open(DATA / "participants.tsv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
    writer.writeheader()
    writer.writerows(rows)
shutil.rmtree(DATA / "derivatives")  # a real study has no simulator truth

# %% [markdown]
# ## Validate first
#
# `inspect` reads every image once (in chunks planned from the memory budget) and
# summarises; any problem stops it with one line naming the file and what is wrong.

# %%
longbrain("inspect", DATA)
broken = shutil.copytree(DATA, work / "broken")
scan = sorted(broken.glob("sub-*/ses-*/anat/*_T1w.nii.gz"))[3]
scan.write_bytes(scan.read_bytes()[:200])  # a truncated download
longbrain("inspect", broken, fails=True)

# %% [markdown]
# ## Align the follow-ups to their baselines
#
# The methods assume a subject's scans share one head position. `align` registers each
# follow-up to its baseline (rigid by default, NCC on a pyramid, every pair of a chunk in
# one program) and writes an aligned dataset plus each transform (ITK text format, which
# ANTs reads).

# %%
longbrain("align", DATA, work / "aligned", "--quiet")
with open(work / "aligned" / "derivatives" / "longbrain-align" / "alignment.tsv") as f:
    motions = [r for r in csv.DictReader(f, delimiter="\t") if r["role"] != "baseline"]
print(f"{len(motions)} follow-ups; estimated rotation median {np.median([float(r['rotation_deg']) for r in motions]):.2f} deg, "
      f"translation median {np.median([float(r['translation_mm']) for r in motions]):.2f} mm")  # fmt: skip
worst = max(motions, key=lambda r: float(r["rotation_deg"]))
before, after = read_bids(DATA), read_bids(work / "aligned")
i = before.subject_ids.index(worst["participant_id"].removeprefix("sub-"))
j = before.session_ids[i].index(worst["session_id"].removeprefix("ses-"))
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
axes[0].imshow(np.rot90(before.volumes[i, 0]), cmap="gray")
axes[0].set_title(f"sub-{before.subject_ids[i]} baseline", fontsize=9)
for ax, cohort, title in zip(axes[1:], (before, after), ("follow-up - baseline, as scanned", "after align")):
    ax.imshow(np.rot90(cohort.volumes[i, j] - cohort.volumes[i, 0]), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_title(f"{title} ({float(worst['rotation_deg']):.1f} deg)" if cohort is before else title, fontsize=9)
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Memory: a budget, and the sizes each stage planned from it
#
# Every stage that batches subjects, scans or voxels picks its chunk and block sizes
# from `--memory-budget` (default: 60% of host RAM on the CPU, 90% of an accelerator's)
# and logs them (`longbrain: memory: ...`). A resumed run keeps the sizes it planned first
# (`OUT/work/plan.json`).

# %%
longbrain("fit", work / "aligned", work / "fit", "--width", "32", "--shared-steps", 5 if few else 30, "--steps", 10 if few else 200, "--fraction", "0.1",
          "--shared-fraction", "0.05", "--memory-budget", "2G")  # fmt: skip

# %% [markdown]
# ## Classify with the study's group names
#
# `--negative` / `--positive` name the two classes; subjects of other groups
# (`Converted`) are left out and counted in the report.

# %%
longbrain("classify", work / "fit", work / "classify", "--negative", "Nondemented", "--positive", "Demented", "--epochs", 2 if few else 30,
          "--token-widths", "16,32", "--head-width", "16", "--sfcn-channels", "4,8,8,16,16", "--streams", "P_time", "--quiet",
          *(["--no-sfcn"] if few else []))  # fmt: skip
print((work / "classify" / "report.md").read_text()[:1500])

# %% [markdown]
# ## Where the outputs go
#
# Each command writes one folder, created whole (replaced only with `--overwrite`),
# with its `config.json` (rerun it with `--config OUT`) and a Markdown report.

# %%
for folder in ("aligned", "fit", "classify"):
    print(f"{folder}/: " + ", ".join(sorted(p.name for p in (work / folder).iterdir())))
