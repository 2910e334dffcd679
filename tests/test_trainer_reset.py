"""The trainer resets both Adam states exactly at the phase boundaries of a run (official
`reset_opt_for_new_lod`), and never when `optimizer.reset_at_phase_boundary` is off."""

import jax
import pytest

from progan_jax import gan as gan_lib
from progan_jax import schedule, train


def spy_on_resets(monkeypatch) -> list[int]:
    """Records the train steps taken before each executed reset (the reset is jitted, so the
    record is made by a callback in the compiled program, not when it is traced)."""
    steps = []
    reset = gan_lib.reset_optimizer_states

    def spied(gan, state):
        jax.debug.callback(lambda step: steps.append(int(step)), state.step)
        return reset(gan, state)

    monkeypatch.setattr(gan_lib, "reset_optimizer_states", spied)
    return steps


@pytest.mark.parametrize("reset", [True, False])
def test_adam_is_reset_at_each_phase_boundary(tmp_path, tiny_config, monkeypatch, reset):
    config = tiny_config
    config.optimizer.reset_at_phase_boundary = reset
    config.eval.swd_every_images = 0
    config.checkpoint.every_images = 0
    steps = spy_on_resets(monkeypatch)
    state = train.Trainer(config, str(tmp_path)).run()

    phases = schedule.phases(config)
    batch = config.schedule.batch_sizes[0]
    assert set(config.schedule.batch_sizes) == {batch}  # images shown = steps * batch
    boundaries = [phase.start for phase in phases[1:]]
    assert len(boundaries) == 4  # 4x4; 8x8 fade, stabilize; 16x16 fade, stabilize
    assert [s * batch for s in steps] == (boundaries if reset else [])
    # The moments that trained the last phase: only its steps, or the whole run's.
    since = phases[-1].start if reset else 0
    for opt_state in (state.g_opt_state, state.d_opt_state):
        assert int(opt_state.count) == (phases[-1].end - since) // batch
