"""`AlignConfig`: every choice of follow-up-to-baseline alignment, with its default."""

from __future__ import annotations

import dataclasses
import math

from longbrain_jax.align.parameters import TRANSFORMS

METRICS = ("ncc", "mi")
OPTIMIZERS = ("auto", "lm", "adam")

#: Iterations per pyramid level when `AlignConfig.iterations` is None.
DEFAULT_ITERATIONS = {"lm": (8, 6, 4), "adam": (200, 120, 80)}


@dataclasses.dataclass(frozen=True)
class AlignConfig:
    """How follow-ups are aligned to their baseline (and baselines to the template).

    **Arguments:**

    - `transform`: 'rigid' (6 dof in 3D, 3 in 2D) or 'affine' (12 / 6; a rigid stage
      runs first and starts the affine one).
    - `metric`: 'ncc' (global normalised cross-correlation; same contrast) or 'mi'
      (Mattes mutual information, `bins` bins; different contrasts).
    - `optimizer`: 'lm' (Levenberg-Marquardt on the NCC residuals; 'ncc' only), 'adam'
      (any metric), or 'auto' (lm for ncc, adam for mi).
    - `smoothing_sigmas`: the pyramid, coarse to fine: Gaussian std per level in
      voxels, applied to both images (a scale space; nothing is shrunk, since only
      the sampled points are visited: `pyramid.py`).
    - `samples`: points per level, drawn uniformly at random at sub-voxel positions
      of the fixed grid, once per level (at most the image's voxel count).
    - `iterations`: optimiser iterations per level (fixed: the whole run is one
      compiled scan); None: 8, 6, 4 for lm and 200, 120, 80 for adam.
    - `learning_rate`: Adam's step at the coarsest level in mm at the brain's radius
      (every parameter is scaled to mm, see `parameters.py`), halved at each finer
      level and decayed to 1% within a level along a cosine. Unused by lm.
    - `damping`: Levenberg-Marquardt's starting lambda (relative to diag(J^T J)).
    - `bias_degree`: lm only: the fixed image is fitted by the moving one under a
      smooth intensity map, polynomials of this degree in space (additive and
      multiplicative), so the scans' different bias fields do not bias the fit; 0 is
      plain global NCC (`register._lm`).
    - `bins`: histogram bins per image for 'mi'.
    - `centre_of_mass`: start from the translation between the images' centres of
      mass (as ANTs does); otherwise from the identity.
    - `chunk_size`: most pairs (baseline, follow-up) aligned together by one compiled program
      (fewer if the memory budget says so, `register.pairs_per_program`).
    - `batch`: how a chunk's pairs are batched in that program: 'vmap' (vectorised;
      best on accelerators), 'map' (a compiled loop; on CPU about 3x faster, as XLA's
      CPU gathers are slow when batched) or 'auto' (vmap on GPU / TPU, map on CPU).
    - `seed`: root PRNG seed; each scan's draws come from its subject label and scan
      index (`cohort.scan_key`), so results do not depend on chunking or order.
    - `to_template`: also register each baseline to the MNI152 template
      (`template_transform`, from the nilearn wheel) and write every scan on the
      template grid at `template_resolution_mm`.
    """

    transform: str = "rigid"
    metric: str = "ncc"
    optimizer: str = "auto"
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0)
    samples: int = 32768
    iterations: tuple[int, ...] | None = None
    learning_rate: float = 2.0
    damping: float = 1e-3
    bias_degree: int = 3
    bins: int = 32
    centre_of_mass: bool = True
    chunk_size: int = 8
    batch: str = "auto"
    seed: int = 0
    to_template: bool = False
    template_transform: str = "affine"
    template_resolution_mm: float = 2.0

    def __post_init__(self):
        for name, value, allowed in (
            ("transform", self.transform, TRANSFORMS),
            ("metric", self.metric, METRICS),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("template_transform", self.template_transform, TRANSFORMS),
            ("batch", self.batch, ("auto", "vmap", "map")),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.optimizer == "lm" and self.metric != "ncc":
            raise ValueError("optimizer 'lm' minimises NCC residuals; use optimizer 'adam' (or 'auto') with metric 'mi'")
        levels = len(self.smoothing_sigmas)
        if levels < 1:
            raise ValueError("smoothing_sigmas needs at least one pyramid level")
        if self.iterations is not None and len(self.iterations) != levels:
            raise ValueError(f"iterations needs one value per pyramid level ({levels}, as smoothing_sigmas), got {self.iterations}")
        if any(not math.isfinite(s) or s < 0 for s in self.smoothing_sigmas):
            raise ValueError(f"smoothing_sigmas must be >= 0, got {self.smoothing_sigmas}")
        if self.samples < 64:
            raise ValueError(f"samples must be >= 64, got {self.samples}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.iterations is not None and any(not isinstance(n, int) or n < 0 for n in self.iterations):
            raise ValueError(f"iterations must be integers >= 0, got {self.iterations}")
        if sum(self.level_iterations) < 1:
            raise ValueError(f"iterations must not all be 0, got {self.iterations}")
        if not 0 <= self.bias_degree <= 4:
            raise ValueError(f"bias_degree must be in 0 ... 4, got {self.bias_degree}")
        if not self.damping > 0:
            raise ValueError(f"damping must be > 0, got {self.damping}")
        if not 8 <= self.bins <= 256:
            raise ValueError(f"bins must be in 8 ... 256, got {self.bins}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if not self.template_resolution_mm >= 1.0:
            raise ValueError(f"template_resolution_mm must be >= 1 (the template's own), got {self.template_resolution_mm}")

    def program(self) -> AlignConfig:
        """The fields a compiled pair program depends on; the rest (chunking, seed, template
        choice) reset to their defaults, so configurations that differ only there share one compilation."""
        return dataclasses.replace(self, chunk_size=8, seed=0, to_template=False, template_transform="affine", template_resolution_mm=2.0)

    @property
    def method(self) -> str:
        """The optimiser used: `optimizer` with 'auto' resolved."""
        if self.optimizer != "auto":
            return self.optimizer
        return "lm" if self.metric == "ncc" else "adam"

    @property
    def level_iterations(self) -> tuple[int, ...]:
        """Iterations per level, `iterations` or the optimiser's default (trimmed or extended to the levels)."""
        if self.iterations is not None:
            return tuple(self.iterations)
        default = DEFAULT_ITERATIONS[self.method]
        levels = len(self.smoothing_sigmas)
        return default[-levels:] if levels <= len(default) else (default[0],) * (levels - len(default)) + default
