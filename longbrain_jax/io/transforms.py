"""Linear transforms as ITK text files (`.txt`, as ANTs, ITK-SNAP and 3D Slicer read and write them).

Convention, the one `antsApplyTransforms -i moving -r fixed -t xfm.txt` uses: a
transform maps points of the FIXED (reference) space to the MOVING space, so the
moving image resampled on the fixed grid is `out(x) = moving(T(x))`. In memory a
transform is a (4, 4) float64 matrix acting on world (RAS+ mm) column vectors
`[x, y, z, 1]`; on disk ITK stores it in LPS mm:

    #Insight Transform File V1.0
    #Transform 0
    Transform: AffineTransform_double_3_3
    Parameters: a11 a12 a13 a21 a22 a23 a31 a32 a33 t1 t2 t3
    FixedParameters: c1 c2 c3

meaning T(x) = A (x - c) + c + t in LPS (ITK's `MatrixOffsetTransformBase`). A 2D
image's world is still 3D (a slice is (X, Y, 1) in NIfTI), so 2D transforms are
written as 3D ones whose z part is the identity. `read_transform` also reads ITK's 2D
affine and the rigid types ANTs and ITK write (`Euler3DTransform`,
`VersorRigid3DTransform`, `Euler2DTransform`, `Rigid2DTransform`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from longbrain_jax.errors import InputError
from longbrain_jax.files import atomic_file

HEADER = "#Insight Transform File V1.0"
#: RAS <-> LPS: the same flip both ways (S = S^-1).
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
_TYPE = re.compile(r"^([A-Za-z0-9]+?)_(double|float)_([23])_([23])$")
_AFFINE_TYPES = ("AffineTransform", "MatrixOffsetTransformBase")
_RIGID_TYPES = ("Euler3DTransform", "VersorRigid3DTransform", "Euler2DTransform", "Rigid2DTransform")


def ras_to_lps(matrix: np.ndarray) -> np.ndarray:
    """A (4, 4) world transform in RAS+ mm as the same transform in ITK's LPS mm (and back)."""
    return _FLIP @ np.asarray(matrix, np.float64) @ _FLIP


lps_to_ras = ras_to_lps


def to_itk_parameters(matrix: np.ndarray, centre: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ITK `AffineTransform_double_3_3` parameters (12,) and fixed parameters (3,) of a RAS (4, 4) transform.

    **Arguments:**

    - `matrix`: (4, 4) world (RAS+ mm) transform, fixed point -> moving point.
    - `centre`: (3,) RAS mm centre of rotation written as the fixed parameters
      (any centre describes the same transform); default the origin.
    """
    lps = ras_to_lps(_check_matrix(matrix))
    c = np.zeros(3) if centre is None else np.asarray(centre, np.float64) * np.array([-1.0, -1.0, 1.0])
    a, offset = lps[:3, :3], lps[:3, 3]
    translation = offset - c + a @ c
    return np.concatenate([a.reshape(-1), translation]), c


def from_itk_parameters(parameters: np.ndarray, fixed_parameters: np.ndarray, kind: str = "AffineTransform") -> np.ndarray:
    """The RAS (4, 4) transform of ITK parameters (the inverse of `to_itk_parameters`).

    `kind` is the ITK class without its `_double_3_3` suffix: `AffineTransform` /
    `MatrixOffsetTransformBase` (2D: 4 + 2 parameters, 3D: 9 + 3), `Euler3DTransform`
    (angles x, y, z in radians + translation; an optional 4th fixed parameter 1 means
    R = Rz Ry Rx, else ITK's default R = Rz Rx Ry), `VersorRigid3DTransform` (versor
    + translation), `Euler2DTransform` / `Rigid2DTransform` (angle + translation).
    Raises `ValueError` on a wrong count (`read_transform` turns it into `InputError`).
    """
    p = np.asarray(parameters, np.float64).reshape(-1)
    f = np.asarray(fixed_parameters, np.float64).reshape(-1)
    if kind in _AFFINE_TYPES:
        d = {12: 3, 6: 2}.get(p.size)
        if d is None:
            raise ValueError(f"{kind} needs 12 (3D) or 6 (2D) parameters, got {p.size}")
        a, t = p[: d * d].reshape(d, d), p[d * d :]
    elif kind in ("Euler3DTransform", "VersorRigid3DTransform"):
        d = 3
        if p.size != 6:
            raise ValueError(f"{kind} needs 6 parameters, got {p.size}")
        a, t = (_euler3d(p[:3], zyx=f.size > 3 and f[3] != 0) if kind == "Euler3DTransform" else _versor(p[:3])), p[3:]
    elif kind in ("Euler2DTransform", "Rigid2DTransform"):
        d = 2
        if p.size != 3:
            raise ValueError(f"{kind} needs 3 parameters, got {p.size}")
        c, s = np.cos(p[0]), np.sin(p[0])
        a, t = np.array([[c, -s], [s, c]]), p[1:]
    else:
        raise ValueError(f"transform type {kind!r} is not supported (supported: {', '.join(_AFFINE_TYPES + _RIGID_TYPES)})")
    if f.size < d:
        raise ValueError(f"{kind} needs {d} fixed parameters (the centre), got {f.size}")
    centre = f[:d]
    lps = np.eye(4)
    lps[:d, :d] = a
    lps[:d, 3] = t + centre - a @ centre
    matrix = lps_to_ras(lps)
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise ValueError("the transform is singular or not finite")
    return matrix


def _euler3d(angles: np.ndarray, zyx: bool) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx if zyx else rz @ rx @ ry


def _versor(v: np.ndarray) -> np.ndarray:
    norm2 = float(v @ v)
    if norm2 > 1.0 + 1e-9:
        raise ValueError(f"versor {v.tolist()} has norm > 1")
    x, y, z = v
    w = np.sqrt(max(1.0 - norm2, 0.0))
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _check_matrix(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)) or not np.allclose(m[3], [0, 0, 0, 1]):
        raise ValueError(f"a transform must be a finite (4, 4) matrix with last row [0, 0, 0, 1], got {m.tolist()}")
    return m


def _numbers(values: np.ndarray) -> str:
    return " ".join(repr(float(x)) for x in values)  # repr: the shortest text that reads back exactly


def format_transform(matrix: np.ndarray, centre: np.ndarray | None = None) -> str:
    """The ITK text file of a RAS (4, 4) transform (see the module docstring)."""
    parameters, fixed = to_itk_parameters(matrix, centre)
    return (
        f"{HEADER}\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
        f"Parameters: {_numbers(parameters)}\nFixedParameters: {_numbers(fixed)}\n"
    )


def save_transform(path: str | os.PathLike, matrix: np.ndarray, centre: np.ndarray | None = None, overwrite: bool = False) -> Path:
    """Write a RAS (4, 4) transform (fixed point -> moving point) as an ITK text file, atomically.

    **Arguments:**

    - `path`: the `.txt` file to write.
    - `matrix`: (4, 4) world (RAS+ mm) transform; a 2D image's has an identity z part.
    - `centre`: (3,) RAS mm centre of rotation stored as ITK's fixed parameters
      (e.g. the fixed image's centre; it does not change the transform).
    - `overwrite`: replace an existing file.
    """
    path = Path(path)
    text = format_transform(matrix, centre)
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)
    return path


def load_transform(path: str | os.PathLike) -> np.ndarray:
    """Read an ITK text transform as a RAS (4, 4) matrix (fixed point -> moving point).

    Raises `InputError(path, problem)` for a missing or unreadable file, a missing
    header or field, a wrong number of parameters, an unsupported or composite
    transform, or a singular or non-finite matrix.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "transform file not found")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read as an ITK text transform ({type(e).__name__})") from None
    if not lines or lines[0] != HEADER:
        raise InputError(path, f"not an ITK text transform (the first line must be {HEADER!r})")
    fields: dict[str, list[str]] = {}
    for line in lines[1:]:
        if line.startswith("#"):
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise InputError(path, f"unexpected line {line[:60]!r}")
        fields.setdefault(name.strip(), []).append(value.strip())
    types = fields.get("Transform", [])
    if len(types) != 1:
        raise InputError(path, f"holds {len(types)} transforms; expected exactly one linear transform")
    match = _TYPE.match(types[0])
    if match is None or match.group(3) != match.group(4):
        raise InputError(path, f"transform type {types[0]!r} is not supported")
    kind, dim = match.group(1), int(match.group(3))
    if kind not in _AFFINE_TYPES + _RIGID_TYPES:
        raise InputError(path, f"transform type {types[0]!r} is not supported (only linear transforms)")
    values = {}
    for name in ("Parameters", "FixedParameters"):
        if len(fields.get(name, [])) != 1:
            raise InputError(path, f"needs one {name!r} line")
        try:
            values[name] = np.array([float(x) for x in fields[name][0].split()], np.float64)
        except ValueError:
            raise InputError(path, f"{name} holds a value that is not a number") from None
    try:
        matrix = from_itk_parameters(values["Parameters"], values["FixedParameters"], kind)
    except ValueError as e:
        raise InputError(path, str(e)) from None
    if dim == 2 and kind in _AFFINE_TYPES and values["Parameters"].size != 6:
        raise InputError(path, f"a 2D {kind} needs 6 parameters, got {values['Parameters'].size}")
    if dim == 3 and kind in _AFFINE_TYPES and values["Parameters"].size != 12:
        raise InputError(path, f"a 3D {kind} needs 12 parameters, got {values['Parameters'].size}")
    return matrix
