"""Checkpoints (progan_jax.checkpointing): a failed write says what failed and keeps the
previous checkpoint; a checkpoint of another parameter layout is refused, not restored."""

import errno

import jax.numpy as jnp
import pytest

from configs import tiny
from progan_jax import checkpointing, parallel
from progan_jax import gan as gan_lib
from tests.runs import final_state


@pytest.mark.slow
def test_full_disk_is_reported_and_the_previous_checkpoint_kept(tmp_path, monkeypatch):
    import errno

    _, state = gan_lib.initialize(tiny.get_config(), parallel.make_mesh())
    checkpointer = checkpointing.Checkpointer(tmp_path)
    checkpointer.save(state, checkpointing.Progress(8, 0, 1))
    checkpointer.wait()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointer._periodic, "save", full)
    with pytest.raises(checkpointing.CheckpointWriteError, match="disk is full") as error:
        checkpointer.save(state, checkpointing.Progress(16, 0, 2))
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
        checkpointer.save({}, checkpointing.Progress(8, 0, 1))
    message = str(raised.value)
    assert says in message and "no earlier checkpoint" in message
    assert "free some space" not in message and "disk is full" not in message
    checkpointer.close()


@pytest.mark.slow
def test_checkpoints_with_a_bias_per_dense_unit_fail_to_restore(tiny, tmp_path):
    """Checkpoints written before G's first bias became one per feature map (16x as many) must
    not restore as garbage: Orbax refuses the shape."""
    _, _, state = tiny
    dense = state.g_params["dense_4x4"]
    old_layout = {**dense, "bias": jnp.zeros(16 * dense["bias"].shape[0])}
    old = state.replace(g_params={**state.g_params, "dense_4x4": old_layout})
    checkpointer = checkpointing.Checkpointer(tmp_path)
    checkpointer.save(old, checkpointing.Progress(images_shown=8, phase_index=0, steps=1))
    with pytest.raises(ValueError, match="not compatible with the stored shape"):
        checkpointer.restore(state)
    checkpointer.close()
