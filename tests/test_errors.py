"""What main.py reports as a user's mistake (runtime.errors.UserError) and its mode table."""

import pytest

from progan_jax.data import input_pipeline
from progan_jax.runtime import accelerators, errors, lease, paths
from progan_jax.training import checkpointing, plan, train


@pytest.mark.parametrize(
    "error",
    [
        errors.ConfigError,
        errors.DataSetMissingError,
        errors.MissingFileError,
        plan.PlanError,
        accelerators.AcceleratorUnusedError,
        checkpointing.CheckpointWriteError,
        input_pipeline.DataPreparationError,
        lease.LeaseError,
        paths.UnreachableError,
        train.NonFiniteLossError,
    ],
)
def test_every_error_a_user_can_fix_is_a_user_error(error):
    """main.py says a UserError and exits 1; anything else keeps its traceback (a bug)."""
    assert issubclass(error, errors.UserError)


def test_user_errors_keep_the_builtin_bases_callers_catch():
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.MissingFileError, FileNotFoundError)
    assert issubclass(paths.UnreachableError, OSError)
