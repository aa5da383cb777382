import jax


def test_four_cpu_devices_for_sharding_tests():
    assert len(jax.devices()) == 4
    assert all(d.platform == "cpu" for d in jax.devices())
