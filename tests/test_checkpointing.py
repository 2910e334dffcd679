"""Checkpoints (progan_jax.training.checkpointing): a failed write says what failed and keeps the
previous checkpoint; a checkpoint of another parameter layout is refused, not restored;
`load_generator` reads G_ema alone; checkpoints with the earlier field names restore."""

import errno

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import tiny
from progan_jax.nets import gan as gan_lib
from progan_jax.runtime import parallel
from progan_jax.training import checkpointing, trained
from tests.runs import final_state


@pytest.mark.slow
def test_full_disk_is_reported_and_the_previous_checkpoint_kept(tmp_path, monkeypatch):
    import errno

    _, state = gan_lib.initialize(tiny.get_config(), parallel.make_mesh())
    checkpointer = checkpointing.Checkpointer(tmp_path)
    checkpointer.save(state, checkpointing.Progress(8, 0))
    checkpointer.wait()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointer._periodic, "save", full)
    with pytest.raises(checkpointing.CheckpointWriteError, match="disk is full") as error:
        checkpointer.save(state, checkpointing.Progress(16, 0))
    assert "checkpoint 8 is intact" in str(error.value)
    checkpointer.close()
    _restored, progress = final_state(tmp_path)
    assert progress.images_shown == 8


@pytest.mark.parametrize(
    "error,says",
    [
        (
            FileNotFoundError(
                errno.ENOENT, "No such file or directory", "state.orbax-checkpoint-tmp"
            ),
            "another process may be writing this workdir",
        ),
        (PermissionError(errno.EACCES, "Permission denied", "checkpoints/8"), "Permission denied"),
    ],
)
def test_a_write_error_says_what_failed_not_free_some_space(tmp_path, monkeypatch, error, says):
    checkpointer = checkpointing.Checkpointer(tmp_path)

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(checkpointer._periodic, "save", failing)
    with pytest.raises(checkpointing.CheckpointWriteError) as raised:
        checkpointer.save({}, checkpointing.Progress(8, 0))
    message = str(raised.value)
    assert says in message and "no earlier checkpoint" in message
    assert "free some space" not in message and "disk is full" not in message
    checkpointer.close()


@pytest.mark.slow
def test_checkpoints_with_a_bias_per_dense_unit_fail_to_restore(tiny, tmp_path):
    """Checkpoints written before G's first bias became one per feature map (16x as many) must
    not restore as garbage: Orbax refuses the shape."""
    _, _, state = tiny
    dense = state.generator_params["dense_4x4"]
    old_layout = {**dense, "bias": jnp.zeros(16 * dense["bias"].shape[0])}
    old = state.replace(generator_params={**state.generator_params, "dense_4x4": old_layout})
    checkpointer = checkpointing.Checkpointer(tmp_path)
    checkpointer.save(old, checkpointing.Progress(images_shown=8, phase_index=0))
    with pytest.raises(ValueError, match="not compatible with the stored shape"):
        checkpointer.restore(state)
    checkpointer.close()


def test_load_generator_reads_only_the_ema_parameters(tmp_path, tiny_config):
    """A checkpoint whose critic and optimizer states cannot be restored into the config's
    shapes still gives its generator: only G_ema is read."""
    _, state = gan_lib.initialize(tiny_config, parallel.make_mesh())
    odd = state.replace(
        critic_params={"other": np.zeros(3, np.float32)},
        critic_opt_state={"other": np.zeros(2, np.float32)},
        generator_opt_state={"other": np.zeros(1, np.float32)},
    )
    checkpointer = checkpointing.Checkpointer(tmp_path)
    checkpointer.save(odd, checkpointing.Progress(8, 0, stage=1, alpha=0.5))
    checkpointer.close()

    generator = trained.load_generator(tiny_config, str(tmp_path), None)
    assert (generator.stage, generator.alpha, generator.images_shown) == (1, 0.5, 8)
    for got, want in zip(
        jax.tree.leaves(generator.params), jax.tree.leaves(state.generator_ema_params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        assert got.sharding.is_fully_replicated
    with pytest.raises(ValueError):  # the whole state does not fit the config's shapes
        checkpointing.Checkpointer(tmp_path).restore(state)


def test_checkpoints_with_the_earlier_field_names_restore(tmp_path, tiny_config):
    """Checkpoints written before the networks were named generator/critic throughout (fields
    g_params, d_params, ...) restore into today's TrainState, whole or G_ema alone."""
    _, state = gan_lib.initialize(tiny_config, parallel.make_mesh())
    earlier = {
        "step": state.step,
        "g_params": state.generator_params,
        "d_params": jax.tree.map(lambda x: x + 1, state.critic_params),
        "g_ema_params": jax.tree.map(lambda x: x * 2, state.generator_ema_params),
        "g_opt_state": state.generator_opt_state,
        "d_opt_state": state.critic_opt_state,
        "rng": state.rng,
    }
    checkpointer = checkpointing.Checkpointer(tmp_path)
    checkpointer._periodic.save(
        8,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(earlier),
            progress=ocp.args.JsonSave({"images_shown": 8, "phase_index": 0, "steps": 1}),
        ),
    )
    checkpointer.close()

    restored, progress = checkpointing.Checkpointer(tmp_path).restore(state)
    assert progress == checkpointing.Progress(8, 0)
    for name in ("critic_params", "generator_ema_params"):
        want = earlier[{"critic_params": "d_params", "generator_ema_params": "g_ema_params"}[name]]
        for got, expected in zip(
            jax.tree.leaves(getattr(restored, name)), jax.tree.leaves(want), strict=True
        ):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    generator = trained.load_generator(tiny_config, str(tmp_path), 8)
    for got, expected in zip(
        jax.tree.leaves(generator.params), jax.tree.leaves(earlier["g_ema_params"]), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_a_checkpoint_that_is_not_there_is_an_error_not_a_fresh_generator(tmp_path, tiny_config):
    """`0` asks for the checkpoint at 0 images shown, which this workdir lacks: an error that
    lists what there is; an untrained generator is asked for by name."""
    from progan_jax.runtime.errors import MissingFileError

    _, state = gan_lib.initialize(tiny_config, parallel.make_mesh())
    checkpointer = checkpointing.Checkpointer(tmp_path)
    checkpointer.save(state, checkpointing.Progress(8, 0, stage=1, alpha=0.5))
    checkpointer.close()
    with pytest.raises(MissingFileError, match=r"No checkpoint at 0 images shown.*\[8\]"):
        trained.load_generator(tiny_config, str(tmp_path), 0)
    with pytest.raises(MissingFileError, match="No best checkpoint"):
        trained.load_generator(tiny_config, str(tmp_path), "best")
    with pytest.raises(checkpointing.ConfigError, match="checkpoint_images_shown: 'lastest'"):
        trained.load_generator(tiny_config, str(tmp_path), "lastest")
    fresh = trained.load_generator(tiny_config, str(tmp_path), "untrained")
    assert (fresh.images_shown, fresh.stage, fresh.alpha) == (0, 2, 1.0)


def _conditional(config, label_size: int = 3):
    config.model.label_size, config.data.labels = label_size, "skin_tone"
    return config


def test_a_checkpoint_names_its_networks_and_classes(tmp_path, tiny_config):
    """A checkpoint keeps its model fields and classes: drawn from a command line without
    them (and without config.json), it restores the conditional G it holds."""
    trained_config = _conditional(tiny.get_config())
    _, state = gan_lib.initialize(trained_config, parallel.make_mesh())
    classes = {"names": ["b", "a", "c"], "shares": {"b": 0.5, "a": 0.25, "c": 0.25}}
    checkpointer = checkpointing.Checkpointer(tmp_path)
    networks = checkpointing.Networks.of(trained_config, classes)
    checkpointer.save(state, checkpointing.Progress(8, 0, 1, 1.0), networks=networks)
    checkpointer.close()
    assert not (tmp_path / "config.json").exists()

    assert checkpointing.trained_networks(tmp_path) == networks
    assert checkpointing.trained_networks(tmp_path).class_names == ("b", "a", "c")
    generator = trained.load_generator(tiny_config, str(tmp_path), None)  # label_size 0 here
    assert generator.gan.label_size == 3 and tiny_config.model.label_size == 0


def test_an_old_workdir_reads_its_networks_from_config_json(tmp_path, tiny_config):
    """A checkpoint from before `networks` was kept (state and progress only) is drawn in the
    networks its run's config.json names, with classes.json's classes."""
    run = _conditional(tiny.get_config())
    _, state = gan_lib.initialize(run, parallel.make_mesh())
    checkpointer = checkpointing.Checkpointer(tmp_path)
    checkpointer._periodic.save(
        8,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state),
            progress=ocp.args.JsonSave({"images_shown": 8, "phase_index": 0}),
        ),
    )
    checkpointer.close()
    (tmp_path / "config.json").write_text(run.to_json_best_effort())
    classes = {"names": ["x", "y", "z"], "shares": {"x": 0.2, "y": 0.3, "z": 0.5}}
    checkpointing.write_classes(tmp_path, classes)

    networks = checkpointing.trained_networks(tmp_path)
    assert networks.model["label_size"] == 3 and networks.class_names == ("x", "y", "z")
    generator = trained.load_generator(tiny_config, str(tmp_path), 8)
    assert generator.gan.label_size == 3 and generator.images_shown == 8


def test_the_best_checkpoint_replaces_the_previous_best(tmp_path, tiny_config):
    _, state = gan_lib.initialize(tiny_config, parallel.make_mesh())
    networks = checkpointing.Networks.of(tiny_config)
    checkpointer = checkpointing.Checkpointer(tmp_path)
    assert checkpointer.best() is None
    for images_shown, value in ((8, 5.0), (16, 4.0)):
        record = dict(metric="fid", value=value, images_shown=images_shown, stage=2)
        progress = checkpointing.Progress(images_shown, 0, 2, 1.0)
        checkpointer.save_best(state, progress, networks, record)
    checkpointer.close()
    assert [p.name for p in (tmp_path / checkpointing.BEST).iterdir()] == ["16"]
    checkpointer = checkpointing.Checkpointer(tmp_path)
    try:
        assert checkpointer.best()["value"] == 4.0
    finally:
        checkpointer.close()
    assert checkpointing.holds_checkpoints(tmp_path)
    assert trained.load_generator(tiny_config, str(tmp_path), "best").images_shown == 16
