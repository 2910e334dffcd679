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


@pytest.fixture(scope="module")
def tiny():
    """The tiny config, its GAN and a train state, built once per test module (shared: a test
    must not change them)."""
    from configs import tiny
    from progan_jax.nets.gan import GAN, create_train_state

    config = tiny.get_config()
    gan = GAN.from_config(config)
    state = create_train_state(gan, jax.random.key(0))
    return config, gan, state


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache shared by the subprocess runs: each program compiles once."""
    return tmp_path_factory.mktemp("xla_cache")


@pytest.fixture
def data_config(tmp_path):
    """The tiny config on 40 synthetic images, its data cache and TFDS folder under tmp_path."""
    from configs import tiny

    config = tiny.get_config()
    config.data.source = "synthetic"
    config.data.synthetic_size = 40
    config.data.cache_dir = str(tmp_path / "cache")
    config.data.data_dir = str(tmp_path / "tfds")
    return config


@pytest.fixture
def data(tmp_path):
    """The tiny config's data section on 8 synthetic images, cached under tmp_path."""
    from configs import tiny

    data = tiny.get_config().data
    data.synthetic_size = 8
    data.cache_dir = str(tmp_path / "cache")
    return data


@pytest.fixture
def sigterm_handler():
    """SIGTERM requests a stop (`interrupt.Interrupted` at the next check) during the test."""
    from progan_jax.runtime import interrupt

    interrupt.reset()
    with interrupt.sigterm_requests_stop():
        yield
    interrupt.reset()


@pytest.fixture
def isolated_logging(caplog):
    """The root logger with only pytest's capture handler, and absl at INFO, for the test.

    Tests of what reaches a terminal must not depend on what earlier tests left behind: a
    handler on a stream pytest has since closed, or a verbosity an absl run raised."""
    import logging

    from absl import logging as absl_logging

    root = logging.getLogger()
    handlers, verbosity = root.handlers[:], absl_logging.get_verbosity()
    root.handlers = [caplog.handler]
    absl_logging.set_verbosity(absl_logging.INFO)
    try:
        yield
    finally:
        root.handlers = handlers
        absl_logging.set_verbosity(verbosity)
