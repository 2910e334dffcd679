"""Test session setup: eight simulated CPU devices and fast compilation.

XLA reads the device count when JAX initialises its backend, so it is set before anything
imports jax. The suite runs on the CPU even on a GPU or TPU host (device counts and float32
tolerances assume it), and so do the runs it starts in subprocesses, which inherit the
environment; TPU targets are compiled for through libtpu's topologies, not run.
"""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax
import pytest

# Compilation, not execution, dominates these tiny programs.
jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture
def tiny_config():
    """A fresh tiny config for each test, so a test may change it. Module-scoped fixtures
    (networks built once) hand out shared objects: a test that changes a config takes this."""
    from configs import tiny

    return tiny.get_config()


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache shared by the subprocess runs: each program compiles once."""
    return tmp_path_factory.mktemp("xla_cache")
