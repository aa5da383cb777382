"""The chunked, sharded, checkpointed loop that trains one model per subject of a cohort.

Cohort fitting and cohort registration share it: subjects are processed in chunks
(the next chunk is read from disk while one trains), each chunk's subject axis is
padded to a multiple of the device count and sharded over the mesh, training runs in
compiled blocks of steps, the state is checkpointed every `checkpoint_every` steps
(orbax), and each finished chunk's results are stored under `work/chunk-NNNNN`, so a
killed run resumes where it stopped (`StateCheckpoints.latest_meta`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from longbrain_jax.engine import sharding
from longbrain_jax.engine.checkpoint import StateCheckpoints, load_tree, save_tree
from longbrain_jax.memory import release_memory


@dataclasses.dataclass(frozen=True)
class ChunkProgram:
    """What to do with each chunk (n = padded chunk size; every array has a leading n axis).

    - `stage`: name recorded in checkpoints.
    - `steps`, `steps_per_call`, `checkpoint_every`: the training loop.
    - `offset`: added to checkpoint counters (steps of earlier stages).
    - `prepare(cohort, ids, n)`: host arrays of the chunk's data, padded to n.
    - `init(n)`: host (or device) initial state of n subjects.
    - `block(state, data, subjects, first_step, num_steps)`: the compiled training call.
    - `finish(state, data, n_real)`: host results of the chunk (a dict of arrays with a
      leading subject axis, cut to the real subjects), stored in `work/chunk-NNNNN`.
    - `status(state, n_real)`: progress fields (loss, psnr, ...) after a block.
    """

    stage: str
    steps: int
    steps_per_call: int
    checkpoint_every: int
    offset: int
    prepare: Callable[[Any, np.ndarray, int], Any]
    init: Callable[[int], Any]
    block: Callable[[Any, Any, Any, int, int], Any]
    finish: Callable[[Any, Any, int], dict]
    status: Callable[[Any, int], dict]


def chunk_starts(num_subjects: int, chunk_size: int, mesh) -> tuple[int, list[int]]:
    """The padded chunk size (a device multiple) and each chunk's first subject."""
    chunk = sharding.padded_count(min(chunk_size, num_subjects), mesh)
    return chunk, list(range(0, num_subjects, chunk))


def run_in_chunks(
    source,
    program: ChunkProgram,
    work: Path,
    ckpt: StateCheckpoints,
    mesh,
    chunk_size: int,
    progress: Callable[[dict], None] | None = None,
) -> None:
    """Train every chunk of `source` not yet finished in `work` (resuming a checkpointed one)."""
    n_total = source.num_subjects
    chunk, starts = chunk_starts(n_total, chunk_size, mesh)
    pending = [c for c in range(len(starts)) if not (work / f"chunk-{c:05d}").exists()]
    latest = ckpt.latest_meta()

    def load(c: int):
        ids = np.arange(starts[c], min(starts[c] + chunk, n_total))
        return ids, source.select(ids)

    with concurrent.futures.ThreadPoolExecutor(1) as loader:
        future = loader.submit(load, pending[0]) if pending else None
        for k, c in enumerate(pending):
            ids, cohort = future.result()
            if k + 1 < len(pending):
                future = loader.submit(load, pending[k + 1])
            data = sharding.shard_subjects(program.prepare(cohort, ids, chunk), mesh)
            del cohort  # only the device copy and the chunk read ahead stay (the memory plan counts on it)
            subjects = sharding.shard_subjects(np.arange(starts[c], starts[c] + chunk, dtype=np.int32), mesh)
            state = sharding.shard_subjects(jax.tree_util.tree_map(np.asarray, program.init(chunk)), mesh)
            step = 0
            if latest is not None and latest[1]["stage"] == program.stage and latest[1]["chunk"] == c:
                state = ckpt.restore(latest[0], state)
                step = latest[1]["step"]
            while step < program.steps:
                n = min(program.steps_per_call, program.steps - step)
                state = program.block(state, data, subjects, step, n)
                step += n
                if step % program.checkpoint_every == 0 and step < program.steps:
                    ckpt.save(program.offset + c * program.steps + step, state, {"stage": program.stage, "chunk": c, "step": step})
                if progress is not None:
                    progress({"stage": program.stage, "chunk": c, "chunks": len(starts), "step": step, "total": program.steps, **program.status(state, len(ids))})
            # training runs asynchronously: wait for it, so what `finish` plans from (memory in use) is not
            # still growing with the last block's temporaries
            state = jax.block_until_ready(state)
            save_tree(work / f"chunk-{c:05d}", program.finish(state, data, len(ids)))
            del state, data
            release_memory()
            if progress is not None:
                progress({"stage": "scored", "chunk": c, "chunks": len(starts)})


def load_chunks(work: Path, num_subjects: int, chunk_size: int, mesh, target: Callable[[int], dict]) -> dict:
    """The stored results of every chunk in one tree; `target(n)` gives the structure of n subjects.

    Filled chunk by chunk into arrays allocated once (one copy of the cohort's results in memory).
    """
    chunk, starts = chunk_starts(num_subjects, chunk_size, mesh)
    joined = target(num_subjects)  # np.zeros: pages are allocated as they are filled
    for c, s in enumerate(starts):
        part = load_tree(work / f"chunk-{c:05d}", target(min(chunk, num_subjects - s)))
        jax.tree_util.tree_map(lambda whole, x, s=s: whole.__setitem__(slice(s, s + x.shape[0]), np.asarray(x)), joined, part)
        del part
    return joined
