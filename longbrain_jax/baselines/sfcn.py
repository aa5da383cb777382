"""SFCN, the simple fully convolutional network (Peng et al. 2021), 2D or 3D, in flax.

As the spatiotemporal-INR paper uses it for trajectory classification: a subject's
scans stacked as input channels in chronological order, zero-padded to a fixed count
for irregular sampling; 5 blocks of conv3 + batch-norm + max-pool + PReLU (32, 64,
128, 256, 256 channels), a 1x1 conv to 64, global average pooling, dropout 0.5 and a
linear layer to the classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from longbrain_jax.cnn import Conv


class SFCN(nn.Module):
    """Images (B, *spatial, C) -> logits (B, num_classes); D = len(spatial) is 2 or 3.

    Spatial axes of length 1 after pooling stay 1 (pooling pads), so small 2D slices work.
    `norm_momentum`: batch-norm running statistics, PyTorch's default (its momentum 0.1 is
    flax's 0.9; see `weightspace.models.TokenEncoderClassifier`).
    """

    channels: Sequence[int] = (32, 64, 128, 256, 256)
    final_channels: int = 64
    dropout: float = 0.5
    num_classes: int = 2
    norm_momentum: float = 0.9

    @nn.compact
    def __call__(self, x: Float[Array, "B *spatial C"], train: bool = False) -> Float[Array, "B c"]:
        d = x.ndim - 2
        for c in self.channels:
            x = Conv(c, (3,) * d, padding="SAME")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=self.norm_momentum)(x)
            x = nn.max_pool(x, (2,) * d, strides=(2,) * d, padding="SAME")
            x = nn.PReLU()(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.norm_momentum)(Conv(self.final_channels, (1,) * d)(x)))
        x = jnp.mean(x, axis=tuple(range(1, d + 1)))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


def stack_timepoints(volumes: np.ndarray, mask: np.ndarray, channels: int = 5) -> np.ndarray:
    """(N, T, *spatial) scans -> (N, *spatial, channels): observed scans in age order, zero-padded.

    Scans beyond `channels` are dropped from the end (the last ones); the scan times
    are not given to the network, as in the paper.
    """
    n, t_max = mask.shape
    out = np.zeros((n, *volumes.shape[2:], channels), np.float32)
    for i in range(n):
        scans = volumes[i][mask[i]][:channels]
        out[i, ..., : scans.shape[0]] = np.moveaxis(scans, 0, -1)
    return out
