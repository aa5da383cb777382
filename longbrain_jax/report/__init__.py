"""Run reports: Markdown tables and matplotlib figures written next to the outputs."""

from longbrain_jax.report.figures import (
    jacobian_overlay,
    save_figure,
    series_montage,
    trajectory_figure,
    weight_embedding,
)
from longbrain_jax.report.markdown import markdown_table

__all__ = ["jacobian_overlay", "markdown_table", "save_figure", "series_montage", "trajectory_figure", "weight_embedding"]
