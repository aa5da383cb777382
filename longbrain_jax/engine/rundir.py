"""A run's output folder: created fresh, replaced only when asked, or checked before a resume."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from longbrain_jax.engine import sharding
from longbrain_jax.errors import InputError
from longbrain_jax.files import atomic_file
from longbrain_jax.memory import agree


def prepare_output_dir(out: Path, record: dict, resume: bool, overwrite: bool) -> None:
    """Create `out` for a new run, or check it holds the unfinished run `record` describes.

    `record` has the run's "config" and "subjects"; resuming needs the same. An existing
    `out` is replaced only with `overwrite`. In a multi-host run process 0 does this and
    tells the others whether it worked (they raise the same error if not).
    """
    if jax.process_count() == 1:
        return _prepare(out, record, resume, overwrite)
    from jax.experimental import multihost_utils

    problem = ""
    if jax.process_index() == 0:
        try:
            _prepare(out, record, resume, overwrite)
        except InputError as e:
            problem = e.problem
    codes = np.frombuffer(problem.encode()[:512].ljust(512), np.uint8)
    problem = bytes(multihost_utils.broadcast_one_to_all(codes)).decode().rstrip()
    if problem:
        raise InputError(out, problem)


def _prepare(out: Path, record: dict, resume: bool, overwrite: bool) -> None:
    saved = out / "config.json"
    if resume:
        if not saved.is_file():
            raise InputError(out, "nothing to resume: no config.json from an earlier run")
        old = json.loads(saved.read_text())
        if old.get("config") != record["config"] or old.get("subjects") != record["subjects"]:
            raise InputError(saved, "the run being resumed used another configuration or other subjects")
        if not (out / "work").exists() and (out / "params").exists():
            raise InputError(out, "this fit already completed; nothing to resume")
        return
    if out.exists():
        if not overwrite:
            raise InputError(out, "already exists; pass overwrite=True (--overwrite) to replace it, or resume=True (--resume)")
        shutil.rmtree(out)
    out.mkdir(parents=True)


def run_size(work: Path, name: str, plan: Callable[[], int]) -> int:
    """A size the run planned (`work/plan.json`, one entry per `name`): planned once, read back on resume.

    A resumed run must keep its chunks (checkpoints and finished chunks are per chunk) and
    its pools, whatever memory the machine that resumes it has. Every process of a
    multi-host run plans for its own memory; they take the smallest (`memory.agree`).
    """
    path = work / "plan.json"
    sizes = json.loads(path.read_text()) if path.is_file() else {}
    if name not in sizes:
        sizes[name] = agree(int(plan()))
        work.mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:
            with atomic_file(path, overwrite=True) as tmp:
                tmp.write_text(json.dumps(sizes, indent=2) + "\n")
    return int(sizes[name])


def run_mesh(work: Path, subjects: int) -> Mesh:
    """The device mesh a run trains on, recorded like its sizes (`run_size`, entry "devices"), so that a
    resumed run restores its checkpoints sharded as they were saved.

    A fresh run takes `sharding.subject_mesh(subjects=subjects)` (a cohort smaller than the
    devices uses as many devices as it has subjects); a run recorded before the count was
    (sizes in its plan but no "devices") used every device. A resume on a machine with fewer
    devices than recorded is refused, naming both counts.
    """
    path = work / "plan.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    available = len(jax.devices())
    count = run_size(work, "devices", lambda: available if earlier else sharding.subject_mesh(subjects=subjects).devices.size)
    if count > available:
        raise InputError(work, f"this run was sharded over {count} devices and this machine has {available}; resume it where it started")
    return sharding.subject_mesh(jax.devices()[:count])
