"""How many subjects a cohort fit loads and trains at once, and in what voxel blocks it
scores them, planned from a memory budget (`longbrain_jax.memory`).

Three programs bound the memory of a fit:

- theta*: `train.shared_block` on a pool of subjects (replicated on every device);
- fine-tuning: `train.finetune_block` on a chunk of subjects (sharded over devices);
- scoring: `evaluate.cohort_scores`, every scan of the chunk reconstructed in blocks of
  voxels while the chunk's optimiser state and foreground lists are still held.

Their buffers are XLA's (`memory.Program`). On the host, per subject of a chunk:
`HOST_SCAN_COPIES` float32 copies of its T x V voxels (the chunk read from disk while it
is prepared, its foreground index list, the next chunk read ahead). Each size is planned
when its phase begins, from the memory in use then: the pool before theta*, the chunk
after it (both recorded, so a resumed run keeps them), the voxel block of each chunk's
scoring once the chunk is trained.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from longbrain_jax.engine.training import init_state
from longbrain_jax.fit.evaluate import abstract_params, cohort_scores
from longbrain_jax.fit.sampling import SubjectData
from longbrain_jax.fit.train import StageConfig, finetune_block, shared_block
from longbrain_jax.inr import spatiotemporal as st
from longbrain_jax.memory import MAX_BLOCK, MIN_BLOCK, Budget, Plan, Program, plan_batch

HOST_SCAN_COPIES = 3


def tree_bytes(tree) -> int:
    """Bytes of a pytree of arrays or `ShapeDtypeStruct`s."""
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


def abstract_data(n: int, t_max: int, num_voxels: int) -> SubjectData:
    """`SubjectData` shapes of n subjects (for tracing without data)."""
    f, i, b = jnp.float32, jnp.int32, jnp.bool_
    s = jax.ShapeDtypeStruct
    return SubjectData(s((n, t_max, num_voxels), f), s((n, t_max), f), s((n, t_max), b), s((n, t_max), i), s((n,), i),
                       s((n, t_max * num_voxels), i), s((n,), i))  # fmt: skip


def abstract_states(cfg: st.INRConfig, stage: StageConfig, n: int):
    """`TrainState` shapes of n subjects."""
    return jax.eval_shape(lambda p: jax.vmap(lambda q: init_state(q, stage.optimizer()))(p), abstract_params(cfg, n))


def finetune_program(cfg, shape: tuple[int, ...], t_max: int) -> Program:
    """One device's `finetune_block` for n subjects."""
    v, sampling = math.prod(shape), cfg.sampling(cfg.finetune, shape, t_max)

    def trace(n):
        return finetune_block.trace(
            abstract_states(cfg.inr, cfg.finetune, n), abstract_data(n, t_max, v), jax.ShapeDtypeStruct((n,), jnp.int32),
            jnp.int32(0), jnp.int32(0), num_steps=cfg.steps_per_call, cfg=cfg.inr, sampling=sampling, stage=cfg.finetune,
        )  # fmt: skip

    return Program(trace, ("finetune", cfg.inr, cfg.finetune, sampling, cfg.steps_per_call, t_max))


def shared_program(cfg, shape: tuple[int, ...], t_max: int) -> Program:
    """`shared_block` for a pool of n subjects (each device holds all of it)."""
    v, sampling = math.prod(shape), cfg.sampling(cfg.shared, shape, t_max)
    params = abstract_params(cfg.inr)
    opt_state = jax.eval_shape(lambda p: cfg.shared.optimizer().init(p), params)

    def trace(n):
        return shared_block.trace(
            params, opt_state, abstract_data(n, t_max, v), jnp.int32(0), jnp.int32(0), num_steps=cfg.steps_per_call,
            cfg=cfg.inr, sampling=sampling, stage=cfg.shared, per_step=cfg.shared_subjects_per_step,
        )  # fmt: skip

    return Program(trace, ("shared", cfg.inr, cfg.shared, sampling, cfg.steps_per_call, cfg.shared_subjects_per_step, t_max))


def _scores_trace(cfg: st.INRConfig, shape: tuple[int, ...], t_max: int, n: int, block: int):
    s = jax.ShapeDtypeStruct
    return cohort_scores.trace(abstract_params(cfg, n), s((n, t_max), jnp.float32), s((n, t_max, math.prod(shape)), jnp.float32),
                               s((n, t_max), jnp.bool_), spatial_shape=shape, cfg=cfg, block=block)  # fmt: skip


def scores_program(cfg: st.INRConfig, shape: tuple[int, ...], t_max: int, block: int) -> Program:
    """One device's `cohort_scores` for n subjects at a voxel block."""
    return Program(lambda n: _scores_trace(cfg, shape, t_max, n, block), ("scores", cfg, shape, t_max, block))


def block_program(cfg: st.INRConfig, shape: tuple[int, ...], t_max: int, n: int) -> Program:
    """One device's `cohort_scores` for n subjects whose parameters and scans are resident, as a
    function of the voxel block (outputs and temporaries only)."""
    return Program(lambda blk: _scores_trace(cfg, shape, t_max, n, blk), ("scores-block", cfg, shape, t_max, n), (MIN_BLOCK, 2 * MIN_BLOCK),
                   resident_arguments=True)  # fmt: skip


def plan_pool(cfg, num_subjects: int, t_max: int, shape: tuple[int, ...], budget: Budget) -> Plan:
    """Subjects loaded for theta* (at most `cfg.shared_pool`); the program is replicated on every device."""
    host = lambda n: HOST_SCAN_COPIES * 4 * t_max * math.prod(shape) * n  # noqa: E731
    on_host = budget.devices if budget.on_host else 1
    shared = shared_program(cfg, shape, t_max)
    return plan_batch("fit: theta*", "subjects in the pool", budget, min(cfg.shared_pool, num_subjects),
                      lambda n, exact: shared(n, exact) * on_host, host, compile_bytes=shared.compile_bytes)  # fmt: skip


def plan_chunk(cfg, num_subjects: int, t_max: int, shape: tuple[int, ...], devices: int, budget: Budget) -> Plan:
    """Subjects fine-tuned together (a device multiple; at most `cfg.chunk_size`): the training
    program, or scoring at the smallest block with the chunk's optimiser state still held."""
    v = math.prod(shape)
    host = lambda n: HOST_SCAN_COPIES * 4 * t_max * v * n  # noqa: E731
    train, smallest = finetune_program(cfg, shape, t_max), scores_program(cfg.inr, shape, t_max, MIN_BLOCK)
    state = abstract_states(cfg.inr, cfg.finetune, 1)
    held = tree_bytes(state) - tree_bytes(state.params) + 4 * t_max * v  # optimiser state, foreground lists
    upper = -(-min(cfg.chunk_size or num_subjects, num_subjects) // devices) * devices
    return plan_batch(
        "fit: fine-tune", "subjects per chunk", budget, upper,
        lambda n, exact: max(train(n, exact), smallest(n, exact) + held * n), host, multiple=devices, shards=devices,
        compile_bytes=lambda exact: max(train.compile_bytes(exact), smallest.compile_bytes(exact)),
    )  # fmt: skip


def plan_block(cfg, shape: tuple[int, ...], t_max: int, per_device: int, budget: Budget) -> Plan:
    """Voxels per reconstruction block when a trained chunk is scored (planned then: its data and
    state are resident, so the program's arguments are not counted again)."""
    on_host = budget.devices if budget.on_host else 1
    by_block = block_program(cfg.inr, shape, t_max, per_device)
    upper = min(cfg.eval_block or MAX_BLOCK, MAX_BLOCK, max(MIN_BLOCK, math.prod(shape)))
    return plan_batch("fit: scoring", "voxels per block", budget, upper, lambda b, exact: by_block(b, exact) * on_host,
                      multiple=MIN_BLOCK, compile_bytes=by_block.compile_bytes)  # fmt: skip
