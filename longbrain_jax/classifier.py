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

`train_classifiers` trains several models of one architecture together (the runs of a k-fold
protocol): every step is vmapped over the models, each with its own rows, validation share,
shuffles, keys and schedule length (the one-cycle schedule is computed from traced step counts,
`onecycle`), and a model with fewer batches per epoch skips the others' extra steps. How many
train together is planned from the memory budget (`models_together`); `train_classifier` is the
one-model case.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

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


def onecycle(step: Array, warmup: Array, total: Array, peak: float) -> Array:
    """`optax.cosine_onecycle_schedule(total, peak)(step)` (warm-up share 0.3, div factors 25 and
    1e4) with the step counts traced, so models of different lengths share one program;
    `warmup` = int(0.3 * total), computed on the host as optax does."""
    values = peak / 25.0 * jnp.array([1.0, 25.0, 1e-4], jnp.float32)  # start, peak, end (cumulative scales 25, 1 / 25e4)
    bounds = jnp.stack([jnp.int32(0), warmup, total]).astype(jnp.float32)
    step = jnp.asarray(step, jnp.float32)
    size = jnp.maximum(bounds[1:] - bounds[:-1], 1.0)
    inside = (bounds[:-1] <= step) & (step < bounds[1:])
    pct = (step - bounds[:-1]) / size
    cosine = values[1:] + (values[:-1] - values[1:]) / 2.0 * (jnp.cos(jnp.pi * pct) + 1.0)
    return jnp.sum(jnp.where(inside, cosine, 0.0)) + jnp.where(bounds[-1] <= step, values[-1], 0.0)


def _optimizer(learning_rate: Array | float, weight_decay: float) -> optax.GradientTransformation:
    """AdamW at this step's learning rate (`optax.adamw`'s chain; the rate is given, not counted, so
    a step that a shorter model of a batch skips does not move its schedule)."""
    return optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(weight_decay), optax.scale(-learning_rate))


def _loss(model, params, state, xb, yb, wb, key):
    logits, new_state = model.apply({"params": params, **state}, xb, train=True, rngs={"dropout": key}, mutable=list(state))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
    return jnp.sum(wb * ce) / jnp.maximum(jnp.sum(wb), 1e-6), new_state


@functools.partial(jax.jit, static_argnames=("model",))
def _init(keys, x, *, model):
    """Each key's variables (a leading model axis); one compiled program per (model, input shape)."""
    return jax.vmap(lambda k: model.init({"params": k, "dropout": k}, x, train=False))(keys)


def _one_step(train: TrainState, state, xb, yb, wb, key, step, active, warmup, total, *, model, peak, weight_decay):
    """One model's guarded AdamW step (`engine.training.guarded_update`) on a batch, with the model's
    other variables (`state`: batch-norm statistics) kept with its parameters; an inactive step
    (past a shorter model's epoch) leaves everything as it was. Returns (train, state, loss)."""
    (loss, new_state), grads = jax.value_and_grad(functools.partial(_loss, model), has_aux=True)(train.params, state, xb, yb, wb, key)
    new = guarded_update(train, loss, grads, _optimizer(onecycle(step, warmup, total, peak), weight_decay), step)
    new_state = jax.tree_util.tree_map(lambda a, b: jnp.where(new.alive, a, b), new_state, state)
    keep = functools.partial(jax.tree_util.tree_map, lambda a, b: jnp.where(active, a, b))
    return keep(new, train), keep(new_state, state), jnp.where(active, new.loss, jnp.nan)


def _rows_of(x, idx, shared: bool):
    """Each model's rows `idx` (M, B) of `x`: one input (N, ...) for all, or one per model (M, N, ...)."""
    return x[idx] if shared else jax.vmap(lambda xm, i: xm[i])(x, idx)


@functools.partial(jax.jit, static_argnames=("model", "peak", "weight_decay"))
def _train_step(train, state, xb, yb, wb, keys, steps, active, warmup, total, *, model, peak, weight_decay):
    """One step of every model (a leading model axis on every argument but the static ones);
    compiled once per (model, shapes), so repeated folds and groups reuse it."""
    step = functools.partial(_one_step, model=model, peak=peak, weight_decay=weight_decay)
    return jax.vmap(step)(train, state, xb, yb, wb, keys, steps, active, warmup, total)


@functools.partial(jax.jit, static_argnames=("model", "peak", "weight_decay", "shared"))  # not donated: the best epoch is kept
def _train_epoch(train, state, x, y, batches, weights, keys, steps, active, warmup, total, *, model, peak, weight_decay, shared):
    """One epoch of every model in one compiled scan over its batches (`batches` (S, M, B) rows of `x`
    on the device); returns the states, the other variables and each step's losses (S, M)."""

    def body(carry, inputs):
        idx, w, k, st, act = inputs
        train, state, loss = _train_step.__wrapped__(*carry, _rows_of(x, idx, shared), y[idx], w, k, st, act, warmup, total,
                                                     model=model, peak=peak, weight_decay=weight_decay)  # fmt: skip
        return (train, state), loss

    (train, state), losses = jax.lax.scan(body, (train, state), (batches, weights, keys, steps, active))
    return train, state, losses


@functools.partial(jax.jit, static_argnames=("model",))
def _evaluate_batch(params, state, xb, yb, *, model):
    """(cross-entropy, predicted class) of each row of every model's batch (M, B, ...) in evaluation mode."""

    def one(p, s, x, y):
        logits = model.apply({"params": p, **s}, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y), jnp.argmax(logits, -1)

    return jax.vmap(one)(params, state, xb, yb)


@functools.partial(jax.jit, static_argnames=("model",))
def _probabilities(variables, xb, *, model):
    return jax.nn.softmax(model.apply(variables, xb, train=False))


def class_weights(y: np.ndarray, kind: str) -> np.ndarray:
    """Per-row weights (N,) of labels `y`: n / (classes x n_class) for "balanced", ones for "none"."""
    if kind == "none":
        return np.ones(len(y), np.float32)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return (len(y) / (len(classes) * counts[inverse])).astype(np.float32)


def _step_program(model: nn.Module, row_shape: tuple[int, ...], cfg: TrainConfig) -> Callable[[int, int], jax.stages.Traced]:
    """`trace(models, batch)`: the training step of `models` models on `batch` rows each, traced abstractly."""
    s = jax.ShapeDtypeStruct
    variables = jax.eval_shape(lambda: _init(jax.random.split(jax.random.key(0), 1), jnp.zeros((1, *row_shape), jnp.float32), model=model))
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    one = jax.tree_util.tree_map(lambda a: s(a.shape[1:], a.dtype), (params, state))
    train = jax.eval_shape(lambda p: init_state(p, _optimizer(0.0, cfg.weight_decay)), one[0])

    def trace(models: int, batch: int):
        stack = functools.partial(jax.tree_util.tree_map, lambda a: s((models, *a.shape), a.dtype))
        i32, f32 = (lambda *shape: s((models, *shape), jnp.int32)), (lambda *shape: s((models, *shape), jnp.float32))  # noqa: E731
        return _train_step.trace(stack(train), stack(one[1]), f32(batch, *row_shape), i32(batch), f32(batch),
                                 jax.eval_shape(lambda: jax.random.split(jax.random.key(0), models)), i32(), s((models,), jnp.bool_),
                                 i32(), i32(), model=model, peak=cfg.learning_rate, weight_decay=cfg.weight_decay)  # fmt: skip

    return trace


def train_batch(model: nn.Module, row_shape: tuple[int, ...], cfg: TrainConfig, budget: Budget, held_bytes: int = 0) -> int:
    """The training batch of one `model` on inputs of `row_shape` under `budget` (at most `cfg.batch_size`;
    `held_bytes`: the training inputs placed on the device beside it)."""
    trace = _step_program(model, row_shape, cfg)
    program = Program(lambda b: trace(1, b), ("classifier", model, row_shape, cfg))
    return plan_batch(f"classifier: {type(model).__name__}", "subjects per batch", budget, cfg.batch_size,
                      lambda b, exact: program(b, exact) + held_bytes, compile_bytes=program.compile_bytes).sizes["subjects per batch"]  # fmt: skip


def models_together(model: nn.Module, row_shape: tuple[int, ...], cfg: TrainConfig, budget: Budget, models: int, batch: int,
                    shared_bytes: int = 0, model_bytes: int = 0) -> int:  # fmt: skip
    """How many of `models` classifiers (k-fold runs) train in one vmapped program at `batch` rows
    under `budget`: cost model = the step's buffers at m models + `shared_bytes` (inputs all of
    them read) + m x `model_bytes` (inputs of their own)."""
    if models == 1:
        return 1
    trace = _step_program(model, row_shape, cfg)
    program = Program(lambda m: trace(m, batch), ("classifier models", model, row_shape, cfg, batch))
    return plan_batch(f"classifier: {type(model).__name__}", "models per program", budget, models,
                      lambda m, exact: program(m, exact) + shared_bytes + m * model_bytes,
                      compile_bytes=program.compile_bytes).sizes["models per program"]  # fmt: skip


class _Plan(NamedTuple):
    """One model's training plan on the host: its rows, validation rows, row weights and keys."""

    fit: np.ndarray
    val: np.ndarray
    weights: np.ndarray  # (N,) class weights on `fit`, 0 elsewhere
    steps_per_epoch: int
    k_init: jax.Array
    k_epochs: jax.Array


def _plan(key: jax.Array, rows: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> _Plan:
    k_split, k_init, k_epochs = jax.random.split(key, 3)
    if cfg.validation_fraction:  # stratified by class
        fit, val = (rows[i] for i in train_test_split(k_split, len(rows), cfg.validation_fraction, strata=y[rows]))
    else:
        fit, val = rows, np.array([], int)
    weights = np.zeros(len(y), np.float32)
    weights[fit] = class_weights(y[fit], cfg.class_weights)
    return _Plan(fit, val, weights, max(1, -(-len(fit) // cfg.batch_size)), k_init, k_epochs)


def _epoch_batches(plan: _Plan, epoch: int, steps: int, batch: int) -> tuple[np.ndarray, ...]:
    """One model's epoch as `steps` batches of `batch` rows (shuffled; the last padded with weight 0;
    batches past its own epoch inactive): (rows (S, B), weights (S, B), keys (S,), step numbers (S,), active (S,))."""
    k_epoch = jax.random.fold_in(plan.k_epochs, epoch)
    order = plan.fit[np.asarray(jax.random.permutation(k_epoch, len(plan.fit)))]
    own = plan.steps_per_epoch
    pad = steps * batch - len(order)  # fixed batch shape: one compilation; padded rows weigh 0
    rows = np.r_[order, np.full(pad, order[0])].reshape(steps, batch)
    weights = np.r_[plan.weights[order], np.zeros(pad)].astype(np.float32).reshape(steps, batch)
    keys = jax.vmap(lambda b: jax.random.fold_in(k_epoch, b + 1))(jnp.arange(steps))
    return rows, weights, keys, epoch * own + np.arange(steps, dtype=np.int32), np.arange(steps) < own


def train_classifier(model: nn.Module, x, y: np.ndarray, cfg: TrainConfig, key: jax.Array, budget: Budget | None = None,
                     rows: np.ndarray | None = None) -> Trained:  # fmt: skip
    """Fit `model` to inputs `x` (N, ...; an array or an `engine.store.RowStore`) and integer labels `y` (N,),
    on the rows `rows` (default: all); one model of `train_classifiers`."""
    (trained,) = train_classifiers(model, x, y, cfg, [key], [np.arange(len(y)) if rows is None else rows], budget)
    return trained


def train_classifiers(model: nn.Module, x, y: np.ndarray, cfg: TrainConfig, keys: Sequence[jax.Array], rows: Sequence[np.ndarray],
                      budget: Budget | None = None, together: int | None = None) -> list[Trained]:  # fmt: skip
    """Train one `model` per key on its `rows` of `x` and `y` (the runs of a k-fold protocol), as many
    together in one vmapped program as `budget` (default `Budget.resolve()`) holds.

    `x`: the inputs every model trains on (N, ...; an array, or an `engine.store.RowStore` read a
    batch at a time), or a callable `i -> inputs of model i` (arrays (N, ...), e.g. standardised on
    model i's rows), built for the models being trained only; models whose inputs differ in shape
    train in separate programs. Each model trains exactly as it would alone: its own validation
    share, shuffles, dropout keys and one-cycle schedule; a model with fewer batches per epoch
    than the others skips the extra steps. The
    batch is `cfg.batch_size` unless the budget holds less (warned); `together` caps the models
    per program (default: as many as the budget holds).
    """
    budget = budget or Budget.resolve()
    y = np.asarray(y)
    shared = not callable(x)
    first = x if shared else x(0)
    row_shape = tuple(first.shape[1:])
    on_device = isinstance(first, np.ndarray)  # an array is placed on the device; a RowStore streams a batch at a time
    held = first.nbytes if on_device else 0
    batch = train_batch(model, row_shape, cfg, budget, held_bytes=held)
    if batch < cfg.batch_size:
        warnings.warn(f"{type(model).__name__}: a batch of {cfg.batch_size} does not fit the memory budget; training with {batch}", stacklevel=2)
        cfg = dataclasses.replace(cfg, batch_size=batch)
    # inputs of their own are stacked on the host and copied to the device: twice on the CPU, where both are host RAM
    own_bytes = held * (2 if budget.on_host else 1)
    together = models_together(model, row_shape, cfg, budget, min(len(keys), together or len(keys)), cfg.batch_size,
                               *((held, 0) if shared else (0, own_bytes)))  # fmt: skip
    plans = [_plan(k, np.asarray(r), y, cfg) for k, r in zip(keys, rows, strict=True)]
    trained = {}
    for start in range(0, len(plans), together):
        group = range(start, min(start + together, len(plans)))
        if shared:
            trained |= dict(zip(group, _train_group(model, first, y, cfg, [plans[i] for i in group], True, on_device), strict=True))
            continue
        own = {i: first if i == 0 else x(i) for i in group}
        first = None  # model 0's own inputs are not held past its group
        for shape in dict.fromkeys(a.shape for a in own.values()):  # inputs of another shape (fewer PCA components): another program
            same = [i for i in group if i in own and own[i].shape == shape]
            inputs = np.stack([own.pop(i) for i in same])  # the list is dropped: the stack and its device copy remain
            trained |= dict(zip(same, _train_group(model, inputs, y, cfg, [plans[i] for i in same], False, on_device), strict=True))
    return [trained[i] for i in range(len(plans))]


def _train_group(model: nn.Module, x, y: np.ndarray, cfg: TrainConfig, plans: list[_Plan], shared: bool, on_device: bool) -> list[Trained]:
    """`train_classifiers` for models trained together (`x` shared (N, ...) or one per model (M, N, ...))."""
    m, batch = len(plans), cfg.batch_size
    steps = max(p.steps_per_epoch for p in plans)
    totals = np.array([cfg.epochs * p.steps_per_epoch for p in plans], np.int32)
    warmup = np.array([int(0.3 * t) for t in totals], np.int32)  # optax.cosine_onecycle_schedule's boundary
    row_shape = x.shape[1:] if shared else x.shape[2:]
    variables = _init(jnp.stack([p.k_init for p in plans]), jnp.zeros((1, *row_shape), jnp.float32), model=model)
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    train = jax.vmap(lambda p: init_state(p, _optimizer(0.0, cfg.weight_decay)))(params)
    data = (jnp.asarray(x), jnp.asarray(y)) if on_device else None
    gather = (lambda idx: _rows_of(data[0], jnp.asarray(idx), shared)) if on_device else (lambda idx: jnp.asarray(x[idx.reshape(-1)].reshape(*idx.shape, *row_shape)))  # noqa: E731
    # an epoch in one compiled scan, except a convolutional model on the CPU (`engine.training.block_steps`:
    # SFCN's step ran 2.9x slower inside the scan at 64 x 64)
    one = jax.tree_util.tree_map(lambda a: a[0], variables)
    probe = jnp.zeros((1, *row_shape), jnp.float32)
    whole_epochs = on_device and block_steps(2, uses_convolution(lambda v: model.apply(v, probe, train=False), one)) > 1
    statics = {"model": model, "peak": cfg.learning_rate, "weight_decay": cfg.weight_decay}
    warmup, totals = jnp.asarray(warmup), jnp.asarray(totals)
    train_hist, val_hist = np.full((cfg.epochs, m), np.nan), np.full((cfg.epochs, m), np.nan)
    best, best_epoch = (train.params, state), np.full(m, cfg.epochs - 1)
    best_score = [(-np.inf, -np.inf)] * m
    validate = [len(p.val) > 0 for p in plans]
    for epoch in range(cfg.epochs):
        rows, weights, keys, numbers, active = zip(*(_epoch_batches(p, epoch, steps, batch) for p in plans), strict=True)
        rows, weights, numbers, active, keys = (*(np.stack(a, 1) for a in (rows, weights, numbers, active)), jnp.stack(keys, 1))  # (S, M, ...)
        if whole_epochs:
            train, state, losses = _train_epoch(train, state, *data, jnp.asarray(rows), jnp.asarray(weights), keys,
                                                jnp.asarray(numbers), jnp.asarray(active), warmup, totals, shared=shared, **statics)  # fmt: skip
        else:
            losses = []
            for b in range(steps):
                train, state, loss = _train_step(train, state, gather(rows[b]), jnp.asarray(y[rows[b]]), jnp.asarray(weights[b]), keys[b],
                                                 jnp.asarray(numbers[b]), jnp.asarray(active[b]), warmup, totals, **statics)  # fmt: skip
                losses.append(loss)
        losses = np.asarray(jnp.stack(losses) if isinstance(losses, list) else losses)  # (S, M), NaN where inactive or diverged
        train_hist[epoch] = [np.mean(losses[: p.steps_per_epoch, i]) for i, p in enumerate(plans)]
        improved = np.array([not v for v in validate])  # without validation the last epoch is kept
        if any(validate):
            ce, predicted = _validate(model, train.params, state, gather, y, [p.val for p in plans], batch)
            for i, p in enumerate(plans):
                if validate[i]:
                    val_hist[epoch, i] = ce[i].sum() / len(p.val)
                    balanced = metrics.balanced_accuracy(y[p.val], predicted[i])
                    score = (balanced, -val_hist[epoch, i]) if cfg.select_by == "balanced_accuracy" else (-val_hist[epoch, i], 0.0)
                    if score > best_score[i]:
                        best_score[i], improved[i] = score, True
        best_epoch = np.where(improved, epoch, best_epoch)
        best = _where_models(jnp.asarray(improved), (train.params, state), best)
    diverged = np.asarray(train.diverged_at)
    for d in diverged:
        if d >= 0:
            warnings.warn(f"{type(model).__name__}: training diverged at step {d}; the last finite parameters are kept", stacklevel=3)
    return [Trained(jax.tree_util.tree_map(lambda a, i=i: a[i], {"params": best[0], **best[1]}), int(best_epoch[i]), train_hist[:, i],
                    val_hist[:, i], int(diverged[i])) for i in range(m)]  # fmt: skip


def _where_models(pick: Array, new, old):
    """Model i's leaves from `new` where `pick[i]`, else from `old` (trees with a leading model axis)."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pick.reshape(-1, *[1] * (a.ndim - 1)), a, b), new, old)


def _validate(model, params, state, gather, y: np.ndarray, val: list[np.ndarray], batch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each model's (cross-entropy, predicted class) on its validation rows `val[i]`, in batches of
    one shape (short lists padded with their first row, the extra outputs dropped)."""
    longest = max(len(v) for v in val)
    index = np.stack([np.r_[v, np.full(longest - len(v), v[0] if len(v) else 0)] for v in val])  # (M, longest)
    batch = max(1, min(batch, longest))
    ce, predicted = [], []
    for start in range(0, longest, batch):
        part = index[:, start : start + batch]
        part = np.concatenate([part, np.repeat(part[:, :1], batch - part.shape[1], 1)], 1)
        out = _evaluate_batch(params, state, gather(part), jnp.asarray(y[part]), model=model)
        ce.append(np.asarray(out[0]))
        predicted.append(np.asarray(out[1]))
    ce, predicted = np.concatenate(ce, 1), np.concatenate(predicted, 1)
    return [ce[i, : len(v)] for i, v in enumerate(val)], [predicted[i, : len(v)] for i, v in enumerate(val)]


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
