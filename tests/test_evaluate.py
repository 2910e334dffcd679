"""Evaluation (progan_jax.evaluate): the generator that a checkpoint is evaluated with."""

import pytest

from configs import tiny
from progan_jax import checkpointing, parallel
from progan_jax import gan as gan_lib


@pytest.mark.slow
def test_evaluate_and_generate_use_the_checkpoints_alpha(tmp_path):
    """A checkpoint mid-fade is evaluated at the alpha it was trained with, whatever today's
    schedule says."""
    config = tiny.get_config()
    _, state = gan_lib.initialize(config, parallel.make_mesh())
    checkpointer = checkpointing.Checkpointer(tmp_path)
    progress = checkpointing.Progress(224, phase_index=3, stage=2, alpha=0.375)
    checkpointer.save(state, progress)
    checkpointer.close()
    config.schedule.fade_images = 640  # today's schedule would put 224 images at alpha 0.05
    generator = checkpointing.load_generator(config, str(tmp_path), None)
    assert (generator.stage, generator.alpha, generator.images_shown) == (2, 0.375, 224)
