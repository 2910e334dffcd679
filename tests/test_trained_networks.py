"""Which config a checkpoint is drawn with (progan_jax.training.trained.with_trained_networks)."""

import json
import logging

from configs import tiny
from progan_jax.training import trained


def test_a_checkpoint_is_drawn_with_its_runs_networks(caplog, tmp_path):
    """The workdir's `model` fields win over the command line's, but for how the networks
    compute (EXECUTION_FIELDS) and for fields the saved config predates; nothing outside
    `model` changes, and the command line's config is left as it was."""
    run = tiny.get_config()
    run.model.label_size, run.model.label_scale = 3, 4.0
    run.model.compute_dtype = "bfloat16"
    run.loss.drift_weight = 0.5
    saved = json.loads(run.to_json_best_effort())
    del saved["model"]["rematerialize"]  # a run from before the field
    command_line = tiny.get_config()
    command_line.model.rematerialize = True
    command_line.lock()
    with caplog.at_level(logging.WARNING):
        (tmp_path / "config.json").write_text(json.dumps(saved))  # a workdir without checkpoints
        config = trained.with_trained_networks(command_line, str(tmp_path))
    assert (config.model.label_size, config.model.label_scale) == (3, 4.0)
    assert config.model.compute_dtype == "float32"  # the command line's: how, not what
    assert config.model.rematerialize is True  # absent from the saved config
    assert config.loss.drift_weight == command_line.loss.drift_weight
    assert command_line.model.label_size == 0
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [
        "config.model.label_scale: the checkpoints were trained with 4.0; using it instead of 1.0.",
        "config.model.label_size: the checkpoints were trained with 3; using it instead of 0.",
    ]
