"""Evaluation (progan_jax.modes.evaluate): the generator that a checkpoint is evaluated with."""

import pytest

from configs import tiny
from progan_jax.nets import gan as gan_lib
from progan_jax.runtime import parallel
from progan_jax.training import checkpointing, trained


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
    generator = trained.load_generator(config, str(tmp_path), None)
    assert (generator.stage, generator.alpha, generator.images_shown) == (2, 0.375, 224)


def test_a_conditional_generator_is_evaluated_overall_and_per_class(
    tmp_path, tiny_config, monkeypatch
):
    """Overall, G is asked for classes in the data's proportions; per class, for that class
    alone against that class's reals."""
    import numpy as np

    from progan_jax.data import input_pipeline
    from progan_jax.metrics import evaluators
    from progan_jax.modes import evaluate

    tiny_config.model.label_size = 3
    tiny_config.data.labels = "skin_tone"
    tiny_config.data.cache_dir = str(tmp_path / "cache")
    tiny_config.checkpoint_images_shown = "untrained"
    tiny_config.evals.evaluate = ("swd", "class_swd")
    asked = []

    class Described:  # stands in for the reals' SWD descriptors
        def __init__(self, config, reals, count, noise_floor):
            self.reals, self.noise_floor = len(reals), {}

        def distances_to(self, generator, batch, seed):
            asked.append((generator.label_frequencies, self.reals))
            return {"swd_x1e3_avg": float(len(asked))}

        def close(self):
            pass

    monkeypatch.setattr(evaluators, "_DescribedReals", Described)
    results = evaluate.evaluate(tiny_config, str(tmp_path))
    model = tiny_config.model
    source = input_pipeline.source_of(tiny_config.data, model.resolution, model.num_channels)
    labels = input_pipeline.labels_of(source, model.label_size)
    counts = labels.counts()
    np.testing.assert_allclose(asked[0][0], counts / counts.sum())
    assert asked[0][1] == counts.sum()
    for label, (frequencies, reals) in enumerate(asked[1:]):
        np.testing.assert_array_equal(frequencies, np.eye(3)[label])
        assert reals == counts[label]
    assert results["swd_x1e3_avg"] == 1.0
    assert [results[f"{name}/swd_x1e3_avg"] for name in labels.names] == [2.0, 3.0, 4.0]


def test_a_conditional_generator_needs_labelled_data(tmp_path, tiny_config):
    """Evaluated against data without labels, a conditional G stops with the field to set
    before any image is read."""
    from progan_jax.modes import evaluate
    from progan_jax.runtime import errors

    tiny_config.model.label_size = 3
    tiny_config.data.cache_dir = str(tmp_path / "cache")
    tiny_config.checkpoint_images_shown = "untrained"
    with pytest.raises(errors.ConfigError, match=r"data\.labels: .* draws 3 classes"):
        evaluate.evaluate(tiny_config, str(tmp_path))
    assert not (tmp_path / "cache").exists()
