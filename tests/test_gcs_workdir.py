"""`--workdir gs://...`: the whole cycle against a GCS emulator on localhost.

Train a tiny run into a bucket, kill it, resume it, evaluate and generate from it: every output
lands in the bucket and nothing appears on the local disk (the data and compilation caches are
local by design and live elsewhere). An unreachable bucket is a clear error within the
configured time. See tests/gcs_emulator.py for how the three storage clients (epath/TensorFlow,
tensorstore, google-cloud-storage) reach the emulator.
"""

import signal
import time

import pytest

from tests.gcs_emulator import gcs_emulator
from tests.runs import TOTAL_IMAGES, run, start, wait_for

pytestmark = pytest.mark.slow  # the GCS emulator and runs of main.py

BUCKET = "progan-test"


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator(BUCKET) as emulator:
        yield emulator


def _steps(names: list[str], folder: str) -> list[int]:
    """The committed checkpoints under run/<folder>/ (Orbax marks them on object stores)."""
    parts = [n.split("/") for n in names if n.startswith(f"run/{folder}/")]
    return sorted({int(p[2]) for p in parts if p[-1] == "commit_success.txt"})


def test_train_kill_resume_evaluate_generate_in_a_bucket(gcs, tmp_path, compile_cache):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    workdir, env = f"gs://{BUCKET}/run", gcs.env
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        process = start(workdir, compile_cache, log, extra_env=env, cwd=cwd)
        # Mid-stage 1: a save starts once the ones before it (32, 64 images) are committed.
        wait_for(log_path, "Checkpoint at 96 images shown", process)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed = _steps(gcs.list_objects("run/checkpoints/"), "checkpoints")
    assert killed and killed[-1] < TOTAL_IMAGES

    resumed = run(workdir, compile_cache, extra_env=env, cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr

    small = ("--config.evals.swd.images=64", "--config.evals.ms_ssim.images=8")
    evaluated = run(workdir, compile_cache, "--mode=evaluate", *small, extra_env=env, cwd=cwd)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    generated = run(
        workdir,
        compile_cache,
        "--mode=generate",
        "--config.generate.num_images=2",
        "--config.generate.keyframes=2",
        "--config.generate.frames_per_keyframe=2",
        extra_env=env,
        cwd=cwd,
    )
    assert generated.returncode == 0, generated.stderr[-3000:]

    names = gcs.list_objects("run/")
    assert "run/config.json" in names
    assert _steps(names, "stage_checkpoints") == [64, 192, 320]
    assert _steps(names, "checkpoints")[-1] == TOTAL_IMAGES
    assert {"run/samples/000000064.png", "run/samples/000000320.png"} <= set(names)
    events = [n for n in names if "events.out.tfevents" in n]
    assert len(events) >= 3, events  # the first run, the resumed one and evaluate
    generated_files = {n for n in names if n.startswith(f"run/generated/{TOTAL_IMAGES}/")}
    assert {
        f"run/generated/{TOTAL_IMAGES}/grid.png",
        f"run/generated/{TOTAL_IMAGES}/interpolation.gif",
        f"run/generated/{TOTAL_IMAGES}/images/0_00000.png",
    } <= generated_files
    assert gcs.read_object(f"run/generated/{TOTAL_IMAGES}/grid.png")[:4] == b"\x89PNG"
    assert list(cwd.iterdir()) == []  # nothing local: no workdir, no 'gs:' folder


def test_an_unreachable_bucket_is_a_clear_error_in_bounded_time(gcs, tmp_path, compile_cache):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = dict(gcs.env)
    env["HTTPS_PROXY"] = env["https_proxy"] = "http://127.0.0.1:9"  # nothing listens there
    env["TENSORSTORE_GCS_HTTP_URL"] = env["STORAGE_EMULATOR_HOST"] = "http://127.0.0.1:9"
    started = time.monotonic()
    result = run(
        f"gs://{BUCKET}/unreachable",
        compile_cache,
        "--storage_timeout=10",
        extra_env=env,
        cwd=cwd,
        timeout=180,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"error: gs://{BUCKET}/unreachable did not answer within 10 s" in result.stderr
    assert elapsed < 120
    generated = run(
        f"gs://{BUCKET}/unreachable",
        compile_cache,
        "--mode=generate",
        "--storage_timeout=5",
        extra_env=env,
        cwd=cwd,
        timeout=180,
    )
    assert generated.returncode == 1
    assert "did not answer within 5 s" in generated.stderr
    assert list(cwd.iterdir()) == []
