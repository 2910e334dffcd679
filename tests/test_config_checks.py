"""Config validation: a bad value is reported with its field before anything is built."""

import pytest

from progan_jax import config_checks, models


def _at_256(config, fmap_base: int):
    config.model.resolution = 256
    config.model.fmap_base = fmap_base
    config.optimizer.learning_rates = (2e-3,) * 7
    config.schedule.batch_sizes = (8,) * 7
    return config


def test_fmap_base_too_small_for_the_resolution_names_the_field(tiny_config):
    """fmap_base 64 gives nf(7) = 64 / 2**7 = 0 maps to the 256x256 block (which used to fail
    later with a ZeroDivisionError in the weight scaling)."""
    config = _at_256(tiny_config, 64)
    with pytest.raises(config_checks.ConfigError, match=r"config\.model\.fmap_base: 64 .*256x256"):
        config_checks.validate(config, devices=1)
    with pytest.raises(config_checks.ConfigError, match="use at least 128 for resolution 256"):
        config_checks.validate(config, devices=1)


def test_smallest_fmap_base_for_the_resolution_is_valid(tiny_config):
    config = _at_256(tiny_config, 128)
    config_checks.validate(config, devices=1)
    nf = [models.feature_maps(s, 128, config.model.fmap_max) for s in range(8)]
    assert min(nf) == 1
