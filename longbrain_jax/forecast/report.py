"""The forecasting experiment's report: Markdown tables, figures and the output folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from longbrain_jax import segmenter as sg
from longbrain_jax.cohort import ROLES
from longbrain_jax.config import write_config
from longbrain_jax.files import atomic_dir, write_tsv
from longbrain_jax.forecast.experiment import ForecastConfig, ForecastResult
from longbrain_jax.latent import autoencoder as ae
from longbrain_jax.report import markdown_table, save_figure

SUMMARY_HEADER = ["method", "held out", "scans", "SSIM", "PSNR dB", "MAE", "Dice", "hippo %", "ventr %", "GM %", "WM %", "folding", "s/subject"]


def summary_rows(rows: list[dict]) -> list[list[object]]:
    """Mean per (method, role): SSIM, PSNR, MAE, Dice, volume errors, folding, s/subject."""
    out = []
    keys = ["ssim", "psnr", "mae", "dice", *(f"volume_error_pct_{s}" for s in sg.SCORED), "folding", "seconds_per_subject"]
    for method in dict.fromkeys(r["method"] for r in rows):
        for role in ("interpolation", "extrapolation"):
            sel = [r for r in rows if r["method"] == method and r["role"] == role]
            if not sel:
                continue
            values = [float(np.mean([r[k] for r in sel])) if k in sel[0] else float("nan") for k in keys]
            out.append([method, role, len(sel), *values])
    return out


def results_markdown(result: ForecastResult) -> str:
    """The main table, the scans-used table and the segmenter's Dice, as Markdown."""
    text = "Mean over held-out scans; volume errors are |predicted - true| / true of the U-Net's volumes.\n\n"
    text += markdown_table(SUMMARY_HEADER, summary_rows(result.rows))
    if result.curve:
        methods = list(dict.fromkeys(r["method"] for r in result.curve))
        ks = sorted({r["scans_used"] for r in result.curve})
        table = [[m, *(next((f"{r['volume_error_pct']:.2f}" for r in result.curve if r["method"] == m and r["scans_used"] == k), "") for k in ks)] for m in methods]
        text += "\n\nMean regional volume error (%) of the extrapolated scan against the number of scans used:\n\n"
        text += markdown_table(["method", *(f"{k} scans" for k in ks)], table)
    check = result.linearity
    if check is not None and len(check["r2"]):
        r2 = ", ".join(f"{name} {np.median(check['r2'][:, s]):.3f}" for s, name in enumerate(sg.SCORED))
        text += (f"\n\nLinearity of MRExtrap's latent space: regional volumes of the decoded interpolations between each "
                 f"subject's first and last known latents, median R^2 of a straight line in alpha over {len(check['r2'])} "
                 f"subjects: {r2}.\n")  # fmt: skip
    if result.segmenter_dice:
        text += "\n\nSegmentation U-Net on the held-out true scans, Dice: " + ", ".join(f"{k} {v:.3f}" for k, v in result.segmenter_dice.items()) + "\n"
    return text


def forecast_figure(result: ForecastResult, path: str | os.PathLike) -> None:
    """One subject's held-out scans and every method's prediction (middle slice)."""
    import matplotlib.pyplot as plt

    from longbrain_jax.report.figures import middle_slice

    fig_data = result.figure
    names = ["truth", *fig_data["predictions"]]
    slots = range(len(fig_data["ages"]))
    fig, axes = plt.subplots(len(slots), len(names), figsize=(2.0 * len(names), 2.2 * len(slots)), squeeze=False)
    for r in slots:
        for c, name in enumerate(names):
            img = fig_data["truth"][r] if name == "truth" else fig_data["predictions"][name][r]
            img = img if img.ndim == 2 else middle_slice(img)
            axes[r, c].imshow(np.rot90(img), cmap="gray", vmin=-1, vmax=1)
            axes[r, c].set_axis_off()
            axes[r, c].set_title(f"{name}\n{ROLES[fig_data['roles'][r]][:6]} {fig_data['ages'][r]:.1f}y", fontsize=7)
    save_figure(fig, path)


def curve_figure(result: ForecastResult, path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for m in dict.fromkeys(r["method"] for r in result.curve):
        sel = [r for r in result.curve if r["method"] == m]
        ax.plot([r["scans_used"] for r in sel], [r["volume_error_pct"] for r in sel], marker="o", label=m)
    ax.set_xlabel("scans used")
    ax.set_ylabel("regional volume error (%)")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def linearity_figure(check: dict, path: str | os.PathLike) -> None:
    """Volumes along the latent path, relative to alpha = 0, one line per subject, a panel per structure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sg.SCORED), figsize=(3.0 * len(sg.SCORED), 2.8))
    for s, (ax, name) in enumerate(zip(axes, sg.SCORED, strict=True)):
        for vol in check["volumes"]:
            ax.plot(check["alphas"], vol[:, s] / max(vol[0, s], 1e-6), color="C0", alpha=0.6)
        ax.set_title(f"{name}\nmedian R^2 {np.median(check['r2'][:, s]):.2f}", fontsize=8)
        ax.set_xlabel("alpha")
    axes[0].set_ylabel("volume / volume at alpha 0")
    save_figure(fig, path)


def _write_rows(path: Path, rows: list[dict]) -> None:
    """Dict rows as a TSV; columns are the union of keys in first-seen order, blanks where missing."""
    header = list(dict.fromkeys(k for r in rows for k in r))
    write_tsv(path, header, [[r.get(k, "") for k in header] for r in rows])


def write_forecasting(out: str | os.PathLike, result: ForecastResult, cfg: ForecastConfig, description: str, spatial_shape: tuple[int, ...],
                      overwrite: bool = False, predictions: Path | None = None) -> Path:  # fmt: skip
    """OUT/report.md, scores.tsv, curve.tsv, figures, config.json, the autoencoder and (moved in from
    `predictions`, as `run_forecasting` wrote them) the predicted NIfTI, atomically."""
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_config(cfg, tmp / "config.json", source=description)
        _write_rows(tmp / "scores.tsv", result.rows)
        if result.curve:
            _write_rows(tmp / "curve.tsv", result.curve)
            curve_figure(result, tmp / "curve.png")
        if result.figure:
            forecast_figure(result, tmp / "forecast.png")
        if result.model is not None:
            ae.save_autoencoder(tmp / "autoencoder", result.model.params, result.model.cfg, spatial_shape)
        if result.linearity is not None and len(result.linearity["r2"]):
            linearity_figure(result.linearity, tmp / "linearity.png")
        (tmp / "results.json").write_text(json.dumps({"segmenter_dice": result.segmenter_dice, "seconds": result.seconds}, indent=2) + "\n")
        if predictions is not None and Path(predictions).exists():
            shutil.move(str(predictions), tmp / "predictions")
        figures = ("\n![forecasts](forecast.png)\n" if result.figure else "") + ("\n![scans used](curve.png)\n" if result.curve else "")
        figures += "\n![latent linearity](linearity.png)\n" if (tmp / "linearity.png").exists() else ""
        (tmp / "report.md").write_text(f"# Forecasting scans\n\n{description}\n\n" + results_markdown(result) + figures)
    return out / "report.md"
