"""Training a flax classifier the way the trajectory-classification paper does.

AdamW with a one-cycle learning-rate schedule, mini-batches, class-weighted cross-entropy, a
held-out validation share of the training set, and the parameters of the epoch with the best
validation balanced accuracy kept (not the last; the paper keeps the best validation loss,
`TrainConfig.select_by="loss"`). Works for any flax module called as
`model.apply(variables, x, train=...)` with optional batch-norm statistics and dropout.
Each step is the engine's guarded step (`engine.training.guarded_update`): a step whose
loss or parameters are not finite is skipped and the classifier keeps its last finite
state (`Trained.diverged_at`); an epoch runs as one compiled scan over its batches (one
compiled step per batch for a convolutional model on the CPU, `engine.training.block_steps`).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from longbrain_jax import metrics
from longbrain_jax.cohort import train_test_split
from longbrain_jax.config import check_literals
from longbrain_jax.engine.training import TrainState, block_steps, guarded_update, init_state, uses_convolution
from longbrain_jax.memory import Budget, Program, plan_batch


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Classifier training (paper defaults: AdamW lr 1e-4, wd 1e-2, one-cycle, batch 20, 100 epochs).

    **Arguments:**

    - `epochs`, `batch_size`, `learning_rate` (peak of the one-cycle schedule), `weight_decay`.
    - `validation_fraction`: share of the training subjects held out to pick the best epoch
      (0 keeps the last epoch).
    - `class_weights`: "balanced" weighs each training subject by n / (classes x n_class), so
      a minority class counts as much as the majority (real cohorts are unbalanced); "none".
    - `select_by`: the best epoch is the one of highest validation "balanced_accuracy" (ties:
      lowest loss), or of lowest validation "loss". Balanced accuracy does not reward a
      model that predicts one class for every input, which the loss can.
    """

    epochs: int = 100
    batch_size: int = 20
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    validation_fraction: float = 0.2
    class_weights: Literal["balanced", "none"] = "balanced"
    select_by: Literal["balanced_accuracy", "loss"] = "balanced_accuracy"

    def __post_init__(self):
        check_literals(self)
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError(f"need epochs >= 1, batch_size >= 1, learning_rate > 0: {self}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")


class Trained(NamedTuple):
    """A trained classifier: its variables, the best epoch, the loss history (NaN from an epoch
    whose steps diverged) and the first step whose loss or parameters were not finite (-1: none)."""

    variables: Any
    best_epoch: int
    train_loss: np.ndarray  # (epochs,)
    val_loss: np.ndarray  # (epochs,) NaN without validation
    diverged_at: int = -1


def _optimizer(total_steps: int, peak_lr: float, weight_decay: float) -> optax.GradientTransformation:
    return optax.adamw(optax.cosine_onecycle_schedule(total_steps, peak_lr), weight_decay=weight_decay)


def _loss(model, params, state, xb, yb, wb, key):
    logits, new_state = model.apply({"params": params, **state}, xb, train=True, rngs={"dropout": key}, mutable=list(state))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
    return jnp.sum(wb * ce) / jnp.maximum(jnp.sum(wb), 1e-6), new_state


@functools.partial(jax.jit, static_argnames=("model",))
def _init(key, x, *, model):
    """The model's variables; one compiled program per (model, input shape), not one per layer."""
    return model.init({"params": key, "dropout": key}, x, train=False)


@functools.partial(jax.jit, static_argnames=("model", "schedule"))
def _train_step(train: TrainState, state, xb, yb, wb, key, step, *, model, schedule) -> tuple[TrainState, Any]:
    """One guarded AdamW step (`engine.training.guarded_update`) of the parameters in `train`, with the
    model's other variables (`state`: batch-norm statistics) kept with them; compiled once per
    (model, schedule, shapes), so repeated folds reuse it."""
    (loss, new_state), grads = jax.value_and_grad(functools.partial(_loss, model), has_aux=True)(train.params, state, xb, yb, wb, key)
    train = guarded_update(train, loss, grads, _optimizer(*schedule), step)
    return train, jax.tree_util.tree_map(lambda new, old: jnp.where(train.alive, new, old), new_state, state)


@functools.partial(jax.jit, static_argnames=("model", "schedule"))  # not donated: the best epoch's parameters are kept
def _train_epoch(train: TrainState, state, x, y, batches, weights, keys, first_step, *, model, schedule):
    """One epoch in one compiled scan over its batches (rows `batches` (S, B) of `x`, on the device);
    returns the state, the model's other variables and each step's loss (S,)."""

    def body(carry, inputs):
        idx, w, key, step = inputs
        train, state = _train_step.__wrapped__(*carry, x[idx], y[idx], w, key, step, model=model, schedule=schedule)
        return (train, state), train.loss

    steps = first_step + jnp.arange(len(batches), dtype=jnp.int32)
    (train, state), losses = jax.lax.scan(body, (train, state), (batches, weights, keys, steps))
    return train, state, losses


@functools.partial(jax.jit, static_argnames=("model",))
def _evaluate_batch(params, state, xb, yb, *, model):
    """(cross-entropy, predicted class) of each row of a batch in evaluation mode."""
    logits = model.apply({"params": params, **state}, xb, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb), jnp.argmax(logits, -1)


@functools.partial(jax.jit, static_argnames=("model",))
def _probabilities(variables, xb, *, model):
    return jax.nn.softmax(model.apply(variables, xb, train=False))


def class_weights(y: np.ndarray, kind: str) -> np.ndarray:
    """Per-row weights (N,) of labels `y`: n / (classes x n_class) for "balanced", ones for "none"."""
    if kind == "none":
        return np.ones(len(y), np.float32)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return (len(y) / (len(classes) * counts[inverse])).astype(np.float32)


def train_batch(model: nn.Module, row_shape: tuple[int, ...], cfg: TrainConfig, budget: Budget, steps: int = 1, held_bytes: int = 0) -> int:
    """The training batch of `model` on inputs of `row_shape` under `budget` (at most `cfg.batch_size`;
    `held_bytes`: the training inputs placed on the device beside it)."""
    s = jax.ShapeDtypeStruct
    variables = jax.eval_shape(lambda: _init(jax.random.key(0), jnp.zeros((1, *row_shape), jnp.float32), model=model))
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    schedule = (max(steps, 1), cfg.learning_rate, cfg.weight_decay)
    train = jax.eval_shape(lambda p: init_state(p, _optimizer(*schedule)), params)

    def trace(b):
        return _train_step.trace(train, state, s((b, *row_shape), jnp.float32), s((b,), jnp.int32), s((b,), jnp.float32),
                                 jax.random.key(0), jnp.int32(0), model=model, schedule=schedule)  # fmt: skip

    program = Program(trace, ("classifier", model, row_shape, schedule))
    return plan_batch(f"classifier: {type(model).__name__}", "subjects per batch", budget, cfg.batch_size,
                      lambda b, exact: program(b, exact) + held_bytes, compile_bytes=program.compile_bytes).sizes["subjects per batch"]  # fmt: skip


def train_classifier(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, key: jax.Array, budget: Budget | None = None,
                     rows: np.ndarray | None = None) -> Trained:  # fmt: skip
    """Fit `model` to inputs `x` (N, ...; an array or an `engine.store.RowStore`) and integer labels `y` (N,).

    `rows`: train on these rows of `x` and `y` only (default: all). Every fold of a k-fold run
    passes the same `x`, so its compiled programs see the same shapes and are reused. The batch is
    `cfg.batch_size` unless `budget` (default `Budget.resolve()`) holds less (warned).
    """
    y = np.asarray(y)
    rows = np.arange(len(y)) if rows is None else np.asarray(rows)
    held = x.nbytes if isinstance(x, np.ndarray) else 0  # an array is placed on the device whole; a RowStore streams
    batch = train_batch(model, tuple(x.shape[1:]), cfg, budget or Budget.resolve(), held_bytes=held)
    if batch < cfg.batch_size:
        warnings.warn(f"{type(model).__name__}: a batch of {cfg.batch_size} does not fit the memory budget; training with {batch}", stacklevel=2)
        cfg = dataclasses.replace(cfg, batch_size=batch)
    k_split, k_init, k_epochs = jax.random.split(key, 3)
    if cfg.validation_fraction:  # stratified by class
        fit_idx, val_idx = (rows[i] for i in train_test_split(k_split, len(rows), cfg.validation_fraction, strata=y[rows]))
    else:
        fit_idx, val_idx = rows, np.array([], int)
    variables = _init(k_init, jnp.asarray(x[rows[:1]]), model=model)
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    steps_per_epoch = max(1, -(-len(fit_idx) // cfg.batch_size))
    schedule = (cfg.epochs * steps_per_epoch, cfg.learning_rate, cfg.weight_decay)
    train = init_state(params, _optimizer(*schedule))

    on_device = isinstance(x, np.ndarray)  # a RowStore is fed from the host, a batch at a time
    data = (jnp.asarray(x), jnp.asarray(y)) if on_device else None
    # an epoch in one compiled scan, except a convolutional model on the CPU (`engine.training.block_steps`:
    # SFCN's step ran 2.9x slower inside the scan at 64 x 64)
    whole_epochs = on_device and block_steps(2, uses_convolution(lambda v: model.apply(v, data[0][:1], train=False), variables)) > 1
    train_hist, val_hist = [], []
    best, best_epoch, best_score = (train.params, state), cfg.epochs - 1, (-np.inf, -np.inf)
    row_weight = np.zeros(len(y), np.float32)
    row_weight[fit_idx] = class_weights(np.asarray(y)[fit_idx], cfg.class_weights)
    for epoch in range(cfg.epochs):
        k_epoch = jax.random.fold_in(k_epochs, epoch)
        order = fit_idx[np.asarray(jax.random.permutation(k_epoch, len(fit_idx)))]
        pad = steps_per_epoch * cfg.batch_size - len(order)  # fixed batch shape: one compilation; padded rows weigh 0
        batches = np.r_[order, np.full(pad, order[0])].reshape(steps_per_epoch, cfg.batch_size)
        weights = np.r_[row_weight[order], np.zeros(pad)].astype(np.float32).reshape(batches.shape)
        keys = jax.vmap(lambda b, k=k_epoch: jax.random.fold_in(k, b + 1))(jnp.arange(steps_per_epoch))
        first = jnp.int32(epoch * steps_per_epoch)
        if whole_epochs:
            train, state, losses = _train_epoch(train, state, *data, jnp.asarray(batches), jnp.asarray(weights), keys, first,
                                                model=model, schedule=schedule)  # fmt: skip
        else:
            losses = []
            for b in range(steps_per_epoch):
                xb, yb = (data[0][batches[b]], data[1][batches[b]]) if on_device else (jnp.asarray(x[batches[b]]), jnp.asarray(y[batches[b]]))
                train, state = _train_step(train, state, xb, yb, jnp.asarray(weights[b]), keys[b], first + b, model=model, schedule=schedule)
                losses.append(train.loss)
        train_hist.append(float(np.mean(np.asarray(losses))))
        params = train.params
        if len(val_idx):
            ce, predicted = _in_batches(functools.partial(_evaluate_batch, params, state, model=model), x, y, val_idx, cfg.batch_size)
            v = float(ce.sum()) / len(val_idx)
            balanced = metrics.balanced_accuracy(y[val_idx], predicted)
            val_hist.append(v)
            score = (balanced, -v) if cfg.select_by == "balanced_accuracy" else (-v, 0.0)
            if score > best_score:
                best, best_epoch, best_score = (params, state), epoch, score
        else:
            val_hist.append(float("nan"))
            best, best_epoch = (params, state), epoch
    diverged_at = int(train.diverged_at)
    if diverged_at >= 0:
        warnings.warn(f"{type(model).__name__}: training diverged at step {diverged_at}; the last finite parameters are kept", stacklevel=2)
    return Trained({"params": best[0], **best[1]}, best_epoch, np.array(train_hist), np.array(val_hist), diverged_at)


def predict_proba(model: nn.Module, variables: Any, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, classes) class probabilities in evaluation mode."""
    (proba,) = _in_batches(lambda xb, _: (_probabilities(variables, xb, model=model),), x, None, np.arange(len(x)), batch_size)
    return proba


def _in_batches(fn: Callable[..., tuple], x, y: np.ndarray | None, index: np.ndarray, batch_size: int) -> tuple[np.ndarray, ...]:
    """`fn(xb, yb)` over the rows `index` of `x` (and `y`) in batches of one shape (the last one padded
    with its first row, its extra outputs dropped: one compiled program per model and row shape,
    whatever the row count); each output concatenated over the rows."""
    batch_size = max(1, min(batch_size, len(index)))
    outs = []
    for start in range(0, len(index), batch_size):
        part = index[start : start + batch_size]
        padded = np.r_[part, np.full(batch_size - len(part), part[0])]
        out = fn(jnp.asarray(x[padded]), None if y is None else jnp.asarray(y[padded]))
        outs.append([np.asarray(o)[: len(part)] for o in out])
    return tuple(np.concatenate(parts) for parts in zip(*outs, strict=True))
