"""Checkpoints (progan_jax.checkpointing): a failed write says what failed and keeps the
previous checkpoint; a checkpoint of another parameter layout is refused, not restored;
`load_generator` reads G_ema alone; checkpoints with the earlier field names restore."""

import errno

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import tiny
from progan_jax import checkpointing, parallel, trained
from progan_jax import gan as gan_lib
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
