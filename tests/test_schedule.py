"""The progressive schedule against hand-computed numbers: phases, alpha, totals, steps."""

import pytest

from progan_jax.training import schedule
from progan_jax.training.schedule import Phase


@pytest.fixture
def config(tiny_config):
    """Three stages (4x4 to 16x16): stabilize 10, fade 6, last stabilization 20 images."""
    tiny_config.schedule.stabilize_images = 10
    tiny_config.schedule.fade_images = 6
    tiny_config.schedule.final_stabilize_images = 20
    tiny_config.schedule.batch_sizes = (4, 3, 5)
    return tiny_config


# stage 0 stabilizes 0-10; stage 1 fades 10-16, stabilizes 16-26; stage 2 fades 26-32, then
# stabilizes 20 images, 32-52.
PHASES = (
    Phase(0, 0, False, 0, 10),
    Phase(1, 1, True, 10, 16),
    Phase(2, 1, False, 16, 26),
    Phase(3, 2, True, 26, 32),
    Phase(4, 2, False, 32, 52),
)


def _schedule(config) -> schedule.Schedule:
    return schedule.Schedule.from_config(config)


def test_phases_and_total(config):
    assert _schedule(config).phases == PHASES
    assert _schedule(config).total_images == 52


def test_last_stabilization_defaults_to_stabilize_images(config):
    config.schedule.final_stabilize_images = None
    assert _schedule(config).phases[-1] == Phase(4, 2, False, 32, 42)
    assert _schedule(config).total_images == 42


def test_phase_images_give_each_stage_its_own_lengths(config):
    """Stage 0 stabilizes 30; stage 1 fades 8 and stabilizes 8; stage 2 fades 4, then the last
    stabilization's 20 (values past the run's stages are unused)."""
    config.schedule.phase_images = (30, 8, 4, 999)
    assert _schedule(config).phases == (
        Phase(0, 0, False, 0, 30),
        Phase(1, 1, True, 30, 38),
        Phase(2, 1, False, 38, 46),
        Phase(3, 2, True, 46, 50),
        Phase(4, 2, False, 50, 70),
    )


def test_phase_images_must_cover_every_stage(config):
    from progan_jax.training import config_checks

    config.schedule.batch_sizes = (8, 8, 8)  # the fixture's (4, 3, 5) suit mbstd groups of 1
    config.schedule.phase_images = (30, 8)
    with pytest.raises(config_checks.ConfigError, match=r"schedule\.phase_images: has 2 value"):
        config_checks.validate(config, devices=1)


def test_zero_length_fades_are_left_out(config):
    config.schedule.fade_images = 0
    assert _schedule(config).phases == (
        Phase(0, 0, False, 0, 10),
        Phase(1, 1, False, 10, 20),
        Phase(2, 2, False, 20, 40),
    )


@pytest.mark.parametrize(
    "shown, index",
    [(0, 0), (9, 0), (10, 1), (15, 1), (16, 2), (31, 3), (32, 4), (51, 4), (52, 4), (1000, 4)],
)
def test_phase_at_takes_the_phase_a_step_starts_in_and_the_last_past_the_end(config, shown, index):
    assert _schedule(config).phase_at(shown) == PHASES[index]


@pytest.mark.parametrize(
    "index, shown, alpha",
    [
        (1, 10, 0.0),  # a fade starts with the previous stage's output
        (1, 13, 0.5),
        (1, 15, 5 / 6),
        (1, 16, 1.0),
        (1, 5, 0.0),  # clipped to [0, 1] outside the phase
        (1, 40, 1.0),
        (3, 29, 0.5),
        (0, 3, 1.0),  # stabilizing: the newest stage alone
        (4, 40, 1.0),
    ],
)
def test_alpha_rises_linearly_over_a_fade(index, shown, alpha):
    assert PHASES[index].alpha(shown) == pytest.approx(alpha)


def test_steps_between_round_each_phase_up_at_its_batch(config):
    # Batches 4, 3, 5 divide no phase: 0 -> 12 in 3 steps of 4 (overshooting the stage-0 end at
    # 10); 12 -> 18 in 2 of 3 (past the fade's end at 16); 18 -> 27 in 3 of 3; 27 -> 32 in 1 of
    # 5; 32 -> 52 in 4 of 5.
    assert _schedule(config).steps_between(0, 52) == 3 + 2 + 3 + 1 + 4
    assert _schedule(config).steps_between(0, 10) == 3
    assert _schedule(config).steps_between(0, 11) == 3
    assert _schedule(config).steps_between(12, 16) == 2
    assert _schedule(config).steps_between(18, 18) == 0
    assert _schedule(config).steps_between(27, 33) == 1 + 1


def test_steps_between_continue_past_the_end_at_the_last_batch(config):
    assert _schedule(config).steps_between(50, 61) == 3  # 50 -> 55 -> 60 -> 65


def test_batch_size_and_learning_rate_are_read_by_stage(config):
    config.optimizer.learning_rates = (1e-3, 2e-3, 3e-3, 4e-3)  # a fourth value is unused
    assert [_schedule(config).batch_size(s) for s in range(3)] == [4, 3, 5]
    assert [_schedule(config).learning_rate(s) for s in range(3)] == [1e-3, 2e-3, 3e-3]


def test_auto_batches_leave_the_phases_and_refuse_a_batch(config):
    """'auto' (resolved later by the plan) still gives the phases; asking for a batch before it
    is resolved is a bug, said as such."""
    config.schedule.batch_sizes = ("auto",)
    run = _schedule(config)
    assert run.phases == PHASES and run.batch_sizes is None
    assert run.stage_schedule(1, batch=8).batch_size == 8
    with pytest.raises(ValueError, match="auto"):
        run.batch_size(0)


def test_stage_schedule_holds_the_stage_fade(config):
    run = _schedule(config)
    assert run.stage_schedule(1) == schedule.StageSchedule(1, 3, 2e-3, 10, 16)
    assert run.stage_schedule(0).fade_start == run.stage_schedule(0).fade_end == 0
    assert run.fades_in(1) and not run.fades_in(0)
