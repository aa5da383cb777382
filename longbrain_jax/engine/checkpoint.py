"""Orbax checkpoints of training state, with a small JSON record of where the run is.

A checkpoint holds a state pytree and `meta` (stage, chunk, step). Restoring needs a
target of the same structure (freshly initialised state, possibly sharded); orbax
fills it and keeps the target's shardings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


class StateCheckpoints:
    """The latest training state of a run, under `directory` (`max_to_keep` kept)."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        )

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Save `state` at monotone counter `step` (asynchronously; `close` waits)."""
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def latest_meta(self) -> tuple[int, dict[str, Any]] | None:
        """(step, meta) of the latest checkpoint, or None."""
        self.manager.wait_until_finished()
        step = self.manager.latest_step()
        if step is None:
            return None
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        return step, meta

    def restore(self, step: int, target: Any) -> Any:
        """The state saved at `step`, with `target`'s structure, shapes and shardings.

        Orbax hands back arrays committed to their devices. Where the target's array was not
        committed (a fresh single-device state), the restored one is not either: a committed
        argument is a different program to `jit`, so a resumed run would compile its training
        step a second time (12 s for the test autoencoder's)."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
        return jax.tree_util.tree_map(_committed_like, state, target)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _committed_like(restored: Any, target: Any) -> Any:
    """`restored` uncommitted where `target` is an uncommitted array (`StateCheckpoints.restore`)."""
    uncommitted = isinstance(target, jax.Array) and not target.committed and isinstance(restored, jax.Array)
    if not uncommitted or jax.dtypes.issubdtype(restored.dtype, jax.dtypes.prng_key):
        return restored
    return jnp.asarray(np.asarray(restored))  # through the host: the only way to an uncommitted array


def _checkpointer(alone: bool) -> ocp.StandardCheckpointer:
    """A checkpointer for every process of the run together, or (`alone`) for this process only."""
    if not alone or jax.process_count() == 1:
        return ocp.StandardCheckpointer()
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}))


def save_tree(path: str | os.PathLike, tree: Any, alone: bool = False) -> None:
    """Write a pytree of (host) arrays as an orbax checkpoint at `path` (atomic).

    In a multi-host run every process calls it together (orbax synchronises them), unless
    `alone`: a file only this process writes (process 0's final outputs).
    """
    with _checkpointer(alone) as ckpt:
        ckpt.save(Path(path).absolute(), jax.tree_util.tree_map(np.asarray, tree))


def load_tree(path: str | os.PathLike, target: Any, alone: bool = False) -> Any:
    """Read a `save_tree` checkpoint into `target`'s structure (arrays or ShapeDtypeStructs)."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    with _checkpointer(alone) as ckpt:
        return ckpt.restore(Path(path).absolute(), abstract)
