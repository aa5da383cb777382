import dataclasses

import pytest

from longbrain_jax.config import config_to_dict, read_config, write_config
from longbrain_jax.io import IntensityNorm, LoadConfig


def test_nested_config_round_trip(tmp_path):
    cfg = LoadConfig(normalise=IntensityNorm(2.0, 98.0), ndim=3, workers=4)
    write_config(cfg, tmp_path / "config.json", command="test")
    back = read_config(LoadConfig, tmp_path / "config.json")
    assert back == cfg
    assert config_to_dict(cfg)["normalise"]["upper_percentile"] == 98.0


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        LoadConfig().workers = 3  # type: ignore[misc]
