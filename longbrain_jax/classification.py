"""The trajectory-classification experiment (Aulakh et al., Table 2), end to end.

Given a fitted cohort (`fit.load_fit`) and its scans:

- for each combination of INR parameter streams (`weightspace.COMBINATIONS`): the
  inr2vec-style token encoder and a logistic-regression baseline on the flat weights;
- SFCN on the scans stacked as channels (`baselines.sfcn`);
- PCA + logistic regression on each subject's change image, last scan minus first
  (`baselines.change_pca`), the floor any trajectory method has to clear;
- logistic regression on any per-subject features the caller brings (`features`: for
  example regional volume rates from FreeSurfer, or a simulator's ground truth as an
  oracle);

all trained and tested on the same subjects. Protocol: a 2:1 split by anatomy; the
test set holds both the healthy and the dementia-like version of each test anatomy
(the simulator's `--paired` mode, pairs from `pair_id`), the training set one version
of each training anatomy. Optionally repeated stratified k-fold by anatomy (mean +- sd).
Neither classifier sees scan times.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import flax.linen as nn
import jax
import numpy as np

from longbrain_jax import metrics
from longbrain_jax.baselines.change_pca import change_images, pca_scores
from longbrain_jax.baselines.sfcn import SFCN, stack_timepoints
from longbrain_jax.classifier import TrainConfig, predict_proba, train_classifiers
from longbrain_jax.cohort import one_version_per_unit, stratified_kfold, train_test_split
from longbrain_jax.config import check_literals, write_config
from longbrain_jax.engine.store import rows
from longbrain_jax.errors import InputError
from longbrain_jax.files import atomic_dir
from longbrain_jax.fit.outputs import FittedCohort
from longbrain_jax.groups import GroupMap
from longbrain_jax.io.bids import BIDSDataset, read_tsv
from longbrain_jax.memory import Budget, plan_host, within_budget
from longbrain_jax.report import markdown_table, save_figure
from longbrain_jax.weightspace.models import LinearClassifier, TokenEncoderClassifier
from longbrain_jax.weightspace.tokens import COMBINATIONS, combination_name, stream_tokens, stream_vectors


@dataclasses.dataclass(frozen=True)
class ClassifyConfig:
    """The experiment's models and protocol (paper defaults where the paper gives them).

    **Arguments:**

    - `token_widths`, `head_width`, `dropout`: the token encoder (paper: 512-1024-2048, 1024, 0.5).
    - `tokens`: "raw" (the paper) or "standardised": every token entry z-scored over the
      training subjects at its position (neuron, input). All subjects are fine-tuned
      from one theta*, so neuron j is the same neuron in every subject and the shared
      theta* dominates raw tokens; standardising leaves each subject's deviation. The
      encoder itself stays invariant to row order either way.
    - `encoder`: its training (paper: AdamW 1e-4, wd 1e-2, one-cycle, batch 20, 100 epochs).
    - `baseline`: training of the logistic regression on standardised flat weights.
    - `features`: training of the logistic regression on caller-given features (`run_classification`'s
      `features`: a few columns, so a larger step than `baseline`'s, which moves thousands of weights).
    - `sfcn_channels`, `sfcn_scans`: SFCN blocks and the fixed channel count (paper: 32-64-128-256-256, 5).
    - `sfcn`: SFCN training (not given in the paper; AdamW with a one-cycle schedule).
    - `change_components`, `change_voxels`: the change-image baseline's principal components
      and the most voxels its block-averaged change images keep.
    - `combinations`: stream combinations to test.
    - `test_fraction`: share of anatomies in the test set (paper: 1/3).
    - `folds`, `repeats`: repeated stratified k-fold by anatomy (0 folds: off).
    - `groups`: which of the dataset's group names are the negative and the positive
      class (subjects of other groups are left out, with a warning that counts them).
    - `seed`: every split and initialisation.
    """

    token_widths: tuple[int, ...] = (512, 1024, 2048)
    head_width: int = 1024
    dropout: float = 0.5
    tokens: Literal["raw", "standardised"] = "raw"
    encoder: TrainConfig = TrainConfig()
    baseline: TrainConfig = TrainConfig(epochs=100, learning_rate=1e-3)
    features: TrainConfig = TrainConfig(epochs=100, learning_rate=0.05)
    sfcn_channels: tuple[int, ...] = (32, 64, 128, 256, 256)
    sfcn_scans: int = 5
    sfcn: TrainConfig = TrainConfig(epochs=100, learning_rate=1e-3)
    change_components: int = 10
    change_voxels: int = 32768
    combinations: tuple[tuple[str, ...], ...] = COMBINATIONS
    test_fraction: float = 1 / 3
    folds: int = 0
    repeats: int = 1
    groups: GroupMap = GroupMap()
    seed: int = 0

    def __post_init__(self):
        from longbrain_jax.inr.spatiotemporal import GROUPS

        check_literals(self)
        if self.change_components < 1 or self.change_voxels < 1:
            raise ValueError(f"change_components and change_voxels must be >= 1: {self.change_components}, {self.change_voxels}")
        for combo in self.combinations:
            if not combo or any(s not in GROUPS for s in combo):
                raise ValueError(f"stream combination {'+'.join(combo)!r} is not made of {GROUPS}")


def paired_split(key: jax.Array, units: tuple[str, ...], y: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The paper's split: (train: one version per training anatomy, test: every version of test anatomies)."""
    k_split, k_pick = jax.random.split(key)
    train, test = train_test_split(k_split, len(y), test_fraction, strata=y, units=units)
    return one_version_per_unit(k_pick, train, units, y), test


def _scores(y: np.ndarray, proba: np.ndarray) -> dict:
    pred = proba.argmax(1)
    both = len(set(y.tolist())) == 2
    return {
        "accuracy": metrics.accuracy(y, pred),
        "balanced_accuracy": metrics.balanced_accuracy(y, pred),
        "auc": metrics.roc_auc(y, proba[:, 1]) if both else float("nan"),
        "confusion": metrics.confusion_matrix(y, pred, 2).tolist(),
    }


def standardise(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    """x (N, ...) z-scored per entry with the mean and sd over the rows `train` (sd 0: left unscaled)."""
    mean, std = x[train].mean(0), x[train].std(0)
    return (x - mean) / np.where(std > 0, std, 1.0)


class _Method(NamedTuple):
    """A classifier of the experiment: its name, input, `inputs(train)` (every subject's inputs,
    standardised on the rows `train` when `per_run`, else the same for every run), model and training."""

    name: str
    streams: str
    inputs: Callable[[np.ndarray], np.ndarray]
    model: nn.Module
    train: TrainConfig
    per_run: bool


class _Methods:
    """Every method of the experiment (`_Method`).

    SFCN's stacked scans are built from `images` (a `Cohort` or a streamed `BIDSDataset`)
    in memory or, when they do not fit the host budget, in a `engine.store.RowStore` under `folder`.
    """

    def __init__(self, fitted: FittedCohort, images, cfg: ClassifyConfig, budget: Budget, folder: Path, features: dict[str, np.ndarray]):
        self.fitted, self.images, self.cfg, self.budget, self.folder, self.features = fitted, images, cfg, budget, folder, features

    def __iter__(self):
        cfg = self.cfg
        encoder = TokenEncoderClassifier(cfg.token_widths, cfg.head_width, cfg.dropout)
        for streams in cfg.combinations:
            name = combination_name(streams)
            tokens = stream_tokens(self.fitted.params, streams)
            per_run = cfg.tokens == "standardised"
            build = (lambda train, t=tokens: standardise(t, train)) if per_run else (lambda train, t=tokens: t)
            yield _Method("INR encoder", name, build, encoder, cfg.encoder, per_run)
            flat = stream_vectors(self.fitted.params, streams)
            yield _Method("INR logistic", name, (lambda train, f=flat: standardise(f, train)), LinearClassifier(), cfg.baseline, True)
        if self.images is not None:
            src = self.images

            def build(idx):
                chunk = src.select(idx)
                return stack_timepoints(chunk.volumes, chunk.mask, cfg.sfcn_scans)

            stacked = rows(build, src.num_subjects, (*src.spatial_shape, cfg.sfcn_scans), self.budget, self.folder, "sfcn-inputs")
            yield _Method("SFCN", "images", (lambda train: stacked), SFCN(cfg.sfcn_channels), cfg.sfcn, False)
            per_subject = 3 * 4 * src.max_scans * math.prod(src.spatial_shape)  # its scans, label maps, its change image
            n = src.num_subjects
            chunk = plan_host("classify: change images", "subjects per chunk", self.budget, n, per_subject).sizes["subjects per chunk"]
            changes = np.concatenate([_changes(src.select(np.arange(i, min(i + chunk, n))), cfg.change_voxels) for i in range(0, n, chunk)])
            yield _Method("change-image PCA", "last - first scan", (lambda train: pca_scores(changes, train, cfg.change_components)),
                          LinearClassifier(), cfg.baseline, True)  # fmt: skip
        for name, x in self.features.items():
            yield _Method("features logistic", name, (lambda train, x=x: standardise(x, train)), LinearClassifier(), cfg.features, True)


def read_features(path: str | os.PathLike, subject_ids: Sequence[str], required: Sequence[str] | None = None) -> np.ndarray:
    """Per-subject features from a TSV table (a `participant_id` column, `sub-` optional, and numeric
    columns, e.g. regional volumes from FreeSurfer), as (len(subject_ids), F) float32 rows in
    `subject_ids` order; a subject without a row gets NaN, unless it is `required` (default: all),
    which is an error naming the file. Subjects of the table not in `subject_ids` are ignored."""
    path = Path(path)
    rows = read_tsv(path)
    if not rows or "participant_id" not in rows[0]:
        raise InputError(path, "needs a participant_id column and one row per subject")
    columns = [c for c in rows[0] if c != "participant_id"]
    if not columns:
        raise InputError(path, "has no feature columns beside participant_id")
    table: dict[str, list[float]] = {}
    for i, row in enumerate(rows, start=1):
        sid = row["participant_id"].removeprefix("sub-")
        if sid in table:
            raise InputError(f"{path}:row {i}", f"subject {sid} appears twice")
        values = []
        for c in columns:
            try:
                values.append(float(row[c]))
            except ValueError:
                raise InputError(f"{path}:row {i}", f"column {c!r} holds {row[c]!r}, not a number") from None
            if not math.isfinite(values[-1]):
                raise InputError(f"{path}:row {i}", f"column {c!r} holds {row[c]!r}, not a finite number")
        table[sid] = values
    ids = [str(s).removeprefix("sub-") for s in subject_ids]
    missing = [s for s in (ids if required is None else [str(r).removeprefix("sub-") for r in required]) if s not in table]
    if missing:
        raise InputError(path, f"has no row for {len(missing)} subject(s): {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    return np.array([table.get(s, [np.nan] * len(columns)) for s in ids], np.float32)


def _changes(chunk, max_voxels: int) -> np.ndarray:
    """The change images of a chunk of subjects read into memory (at most `max_voxels` features each)."""
    return change_images(chunk.volumes, chunk.mask, max_voxels)


def subjects_of(images, indices):
    """The subjects `indices` of a `Cohort` (in memory) or a `BIDSDataset` (still unread)."""
    return images.subset(indices) if isinstance(images, BIDSDataset) else images.select(indices)


def _evaluate(method: _Method, runs: list[tuple[np.ndarray, np.ndarray]], y: np.ndarray, keys: list[jax.Array], budget: Budget) -> list[dict]:
    """Train `method` on each run's (train, test) rows (the paper's split and every k-fold run), as
    many runs together as the budget holds (`classifier.train_classifiers`), and score each on its test rows."""
    x = (lambda i: method.inputs(runs[i][0])) if method.per_run else method.inputs(runs[0][0])
    trained = train_classifiers(method.model, x, y, method.train, keys, [train for train, _ in runs], budget)
    scores = []
    for i, ((_, test), t) in enumerate(zip(runs, trained, strict=True)):
        xi = x(i) if method.per_run else x  # rebuilt: a run's inputs are not all held at once
        test_rows = xi[test] if isinstance(xi, np.ndarray) else _Rows(xi, test)  # on disk: read by batch
        scores.append(_scores(y[test], predict_proba(method.model, t.variables, test_rows)) | {"best_epoch": t.best_epoch})
    return scores


class _Rows:
    """The rows `index` of `x` (an array or a `RowStore`), indexed without copying them all first."""

    def __init__(self, x, index: np.ndarray):
        self.x, self.index = x, np.asarray(index)
        self.shape = (len(self.index), *x.shape[1:])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        return self.x[self.index[i]]


@within_budget
def run_classification(
    fitted: FittedCohort,
    images,
    cfg: ClassifyConfig = ClassifyConfig(),
    progress: Callable[[str], None] | None = None,
    use_images: bool = True,
    budget: Budget | None = None,
    features: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """Run every method on the paper's split (and k-fold if asked); returns a results dict.

    `features` maps a name to per-subject features (N, F) in `fitted`'s subject order
    (finite; standardised on the training rows), each classified by logistic regression
    under the same splits as every other method.

    `images` (a `Cohort` or a streamed `BIDSDataset`) must list the same subjects in the
    same order as `fitted`; SFCN runs on them when `use_images` (None: no SFCN). Training
    batches and SFCN's inputs are planned from `budget` (default `Budget.resolve()`).
    Pairs come from `images.metadata[i]["pair_id"]`; without pair ids each subject is
    its own anatomy and the split is a plain stratified one.
    """
    if images is not None and tuple(images.subject_ids) != tuple(fitted.subject_ids):
        raise InputError("images", "the scans' subjects differ from the fitted cohort's (order matters)")
    features = {name: np.asarray(x, np.float32) for name, x in (features or {}).items()}
    for name, x in features.items():
        if x.ndim != 2 or len(x) != len(fitted.subject_ids):
            raise InputError(f"features {name!r}", f"need (subjects, F) = ({len(fitted.subject_ids)}, F) rows, got shape {x.shape}")
    keep = cfg.groups.keep(fitted.groups)
    classes = cfg.groups.class_names([fitted.groups[i] for i in keep])
    if keep.size < len(fitted.groups):
        fitted, images = fitted.select(keep), None if images is None else subjects_of(images, keep)
        features = {name: x[keep] for name, x in features.items()}
    for name, x in features.items():
        if not np.all(np.isfinite(x)):
            bad = [fitted.subject_ids[i] for i in np.flatnonzero(~np.all(np.isfinite(x), axis=1))]
            raise InputError(f"features {name!r}", f"non-finite values for subject(s) {bad[:5]}")
    y = cfg.groups.labels(fitted.groups)
    units = tuple(str((images.metadata[i] if images is not None else {}).get("pair_id", "") or fitted.subject_ids[i]) for i in range(len(y)))
    key = jax.random.key(cfg.seed)
    train, test = paired_split(jax.random.fold_in(key, 0), units, y, cfg.test_fraction)
    if len(set(y[train].tolist())) < 2 or len(set(y[test].tolist())) < 2:
        raise InputError("cohort", "too few subjects of each group for a train/test split")
    folds = []
    for r in range(cfg.repeats if cfg.folds else 0):
        k_fold = jax.random.fold_in(key, 1000 + r)
        for f, (tr, te) in enumerate(stratified_kfold(k_fold, len(y), cfg.folds, strata=y, units=units)):
            folds.append((one_version_per_unit(jax.random.fold_in(k_fold, f), tr, units, y), te))
    rows = []
    folder = tempfile.TemporaryDirectory(prefix="longbrain-classify-")
    for m, method in enumerate(_Methods(fitted, images if use_images else None, cfg, budget, Path(folder.name), features)):
        if progress is not None:
            progress(f"{method.name} {method.streams}")
        started = time.perf_counter()
        keys = [jax.random.fold_in(key, 10 + m)] + [jax.random.fold_in(key, 10_000 + 100 * m + i) for i in range(len(folds))]
        split, *fold = _evaluate(method, [(train, test), *folds], y, keys, budget)
        rows.append({"method": method.name, "streams": method.streams, **split, **_mean_sd(fold, "accuracy"),
                     **_mean_sd(fold, "balanced_accuracy"), "seconds": time.perf_counter() - started})  # fmt: skip
    folder.cleanup()
    return {
        "rows": rows,
        "train": [fitted.subject_ids[i] for i in train],
        "test": [fitted.subject_ids[i] for i in test],
        "num_folds": len(folds),
        "classes": list(classes),
    }


def _mean_sd(folds: list[dict], metric: str) -> dict:
    values = [f[metric] for f in folds]
    return {f"kfold_{metric}_mean": float(np.mean(values)) if values else float("nan"),
            f"kfold_{metric}_sd": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")}  # fmt: skip


# -- report ---------------------------------------------------------------------------------
def results_table(results: dict) -> str:
    """The Markdown table of every method side by side."""
    def kfold(r, metric):
        mean, sd = r[f"kfold_{metric}_mean"], r[f"kfold_{metric}_sd"]
        return f"{mean:.3f} +- {sd:.3f}" if np.isfinite(mean) else "-"

    rows = [[r["method"], r["streams"], r["accuracy"], r["balanced_accuracy"], r["auc"], kfold(r, "accuracy"), kfold(r, "balanced_accuracy"),
             str(r["confusion"])] for r in results["rows"]]  # fmt: skip
    return markdown_table(["method", "input", "accuracy", "balanced acc.", "ROC AUC", "k-fold accuracy", "k-fold balanced acc.",
                           "confusion [[TN, FP], [FN, TP]]"], rows, digits=3)  # fmt: skip


def confusion_figure(results: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(1.9 * len(rows), 2.4), squeeze=False)
    for ax, r in zip(axes[0], rows, strict=True):
        cm = np.array(r["confusion"])
        ax.imshow(cm, cmap="Blues", vmin=0)
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=9)
        short = [c[:6] for c in results.get("classes", ("0", "1"))]
        ax.set_xticks([0, 1], short, fontsize=7)
        ax.set_yticks([0, 1], short, fontsize=7)
        ax.set_title(f"{r['method']}\n{r['streams']}", fontsize=7)
    fig.supxlabel("predicted", fontsize=8)
    fig.supylabel("true", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def write_classification(out: str | os.PathLike, results: dict, cfg: ClassifyConfig, description: str, overwrite: bool = False) -> Path:
    """OUT/report.md, results.json, confusion.png and config.json, atomically."""
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_config(cfg, tmp / "config.json", source=description)
        (tmp / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
        confusion_figure(results, tmp / "confusion.png")
        n_train, n_test = len(results["train"]), len(results["test"])
        (tmp / "report.md").write_text(
            "# Trajectory classification\n\n"
            f"{description}\n\nClasses: {results['classes'][0]} (negative, 0) vs {results['classes'][1]} (positive, 1). Split by anatomy: {n_train} training subjects (one version per anatomy), "
            f"{n_test} test subjects (both versions of each test anatomy); "
            f"{results['num_folds']} k-fold runs. Seed {cfg.seed}.\n\n" + results_table(results) + "\n![confusion](confusion.png)\n"
        )
    return out / "report.md"
