"""What a run runs on: the start-up line, a GPU or TPU host running JAX on its CPU, and the
CPU-only XLA flags."""

import logging
import os

import jax
import pytest

from progan_jax.runtime import accelerators, machine, xla_flags


def _fake_dev(tmp_path, *names):
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    return str(tmp_path)


@pytest.mark.parametrize(
    "files, extra",
    [(["nvidia0", "nvidiactl"], "cuda12"), (["accel0"], "tpu"), (["vfio/0", "vfio/vfio"], "tpu")],
)
def test_a_cpu_run_on_an_accelerator_host_stops_naming_the_extra(tmp_path, files, extra):
    dev = _fake_dev(tmp_path, *files)
    with pytest.raises(
        accelerators.AcceleratorUnusedError, match=rf"pip install -e '\.\[{extra}\]'"
    ):
        accelerators.check_platform(allow_cpu=False, dev=dev)
    accelerators.check_platform(allow_cpu=True, dev=dev)  # on purpose


def test_a_cpu_host_runs_and_says_what_it_runs_on(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    dev = _fake_dev(tmp_path, "vfio/vfio", "nvidiactl", "null")  # no accelerator among them
    assert machine.visible_accelerator(dev) is None
    accelerators.check_platform(allow_cpu=False, dev=dev)
    assert f"on cpu: 8 x {jax.devices()[0].device_kind} (8 local), process 0 of 1" in caplog.text


@pytest.mark.parametrize(
    "platforms, devices, cpu",
    [("cpu", ["nvidia0"], True), ("cuda", [], False), ("tpu,cpu", [], False), ("", [], True),
     ("", ["nvidia0"], False)],
)  # fmt: skip
def test_cpu_flags_only_for_a_cpu_run(tmp_path, monkeypatch, platforms, devices, cpu):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    dev = _fake_dev(tmp_path, *devices)
    assert xla_flags.runs_on_cpu(dev) == cpu
    xla_flags.set_default_flags(dev)
    flags = os.environ["XLA_FLAGS"].split()
    assert flags[0] == "--xla_force_host_platform_device_count=2"
    assert any("ynn_fusion_type" in f for f in flags) == cpu


def test_data_sheet_figures_for_the_planned_tpus():
    v5e = accelerators.SPECS["TPU v5 lite"]
    assert v5e.memory_bytes == 15.75 * 2**30 and v5e.peak_flops("bfloat16") == 197e12
    h100 = accelerators.SPECS["NVIDIA H100 80GB HBM3"]
    assert h100.peak_flops("bfloat16") > h100.peak_flops("float32")
