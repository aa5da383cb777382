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


def test_simulation_config_round_trip_with_nested_tuples(tmp_path):
    from longbrain_jax.simulate import AtrophyConfig, SimulationConfig

    cfg = SimulationConfig(num_subjects=3, regular_ages=(50.0, 60.0), atrophy=AtrophyConfig(disease_mtl_pct_per_year=-2.0))
    write_config(cfg, tmp_path / "config.json")
    assert read_config(SimulationConfig, tmp_path / "config.json") == cfg
