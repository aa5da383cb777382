"""Reading and writing images and longitudinal BIDS datasets, with input validation."""

from longbrain_jax.io.bids import (
    BIDSDataset,
    BIDSWriter,
    LoadConfig,
    bids_label,
    derivative_path,
    read_bids,
    scan_bids,
    scan_path,
    write_bids,
    write_derivative,
)
from longbrain_jax.io.intensity import IntensityNorm, normalise_intensity
from longbrain_jax.io.nifti import (
    ImageHandle,
    load_displacement,
    load_image,
    open_image,
    read_header,
    save_displacement,
    save_image,
)
from longbrain_jax.io.transforms import load_transform, save_transform

__all__ = [
    "BIDSDataset",
    "BIDSWriter",
    "ImageHandle",
    "IntensityNorm",
    "LoadConfig",
    "bids_label",
    "derivative_path",
    "load_displacement",
    "load_image",
    "load_transform",
    "normalise_intensity",
    "open_image",
    "read_bids",
    "read_header",
    "scan_bids",
    "save_displacement",
    "save_image",
    "save_transform",
    "scan_path",
    "write_bids",
    "write_derivative",
]
