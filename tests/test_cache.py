"""The resumable, locked build of a `.npy` cache (progan_jax.data.cache): the files numpy
reads, chunks kept across SIGTERM, errors and kills, and one builder per folder."""

import concurrent.futures
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from progan_jax.data import cache, input_pipeline, sources, synthetic
from progan_jax.runtime import interrupt
from tests.builds import counting, leftovers, sigterm_at

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL_SET = 20  # synthetic 16x16 images, committed in chunks of CHUNK images
CHUNK = 4


@pytest.fixture
def small_chunks(data_config, monkeypatch):
    """20 images in chunks of 4: an interrupted build has complete chunks to keep."""
    data_config.data.synthetic_size = SMALL_SET
    monkeypatch.setattr(cache, "CHUNK_BYTES", CHUNK * 16 * 16 * 3)
    return data_config


def _folder(data) -> pathlib.Path:
    return sources.resolve(data, 16, 3).cache_path().parent


def test_caches_are_npy_files_that_numpy_reads(data):
    stage = input_pipeline.stage_images(input_pipeline.source_of(data, 16, 3), 1)
    folder = _folder(data)
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "images_16.npy", "images_8.npy"]
    np.testing.assert_array_equal(np.load(folder / "images_8.npy"), stage)
    base = np.load(folder / "images_16.npy")
    assert base.shape == (8, 16, 16, 3) and base.dtype == np.uint8


def _uninterrupted(config, tmp_path, stage: int = 2) -> np.ndarray:
    clean = config.data.copy_and_resolve_references()
    clean.cache_dir = str(tmp_path / "uninterrupted")
    return np.array(input_pipeline.stage_images(input_pipeline.source_of(clean, 16, 3), stage))


@pytest.mark.parametrize(
    ("stage", "module", "function", "signal_at", "committed", "calls_left"),
    [
        # Decoding: SIGTERM while drawing image 10, after two complete chunks of four.
        (2, synthetic, "draw_face", 10, 8, SMALL_SET - 8),
        # Box filtering (a call per chunk): SIGTERM during the third chunk.
        (1, sources, "box_downsample", 3, 8, 3),
    ],
    ids=["decode", "box_filter"],
)
def test_sigterm_stops_preparation_promptly_and_a_restart_reuses_complete_chunks(
    small_chunks,
    tmp_path,
    monkeypatch,
    sigterm_handler,
    stage,
    module,
    function,
    signal_at,
    committed,
    calls_left,
):
    data = small_chunks.data
    want = _uninterrupted(small_chunks, tmp_path, stage)
    if stage != 2:
        input_pipeline.stage_images(
            input_pipeline.source_of(data, 16, 3), 2
        )  # the base is decoded; box filtering stops
    calls = counting(monkeypatch, module, function, sigterm_at(signal_at))
    with pytest.raises(interrupt.Interrupted):
        input_pipeline.stage_images(input_pipeline.source_of(data, 16, 3), stage)
    assert len(calls) == signal_at  # stopped at the signal, not at the end of the set
    cache_root = pathlib.Path(data.cache_dir)
    left = leftovers(cache_root)
    assert left["temp"] == []
    (partial,) = left["partial"]  # the complete chunks only, kept for the restart
    res = 2 ** (stage + 2)
    assert partial.stat().st_size == cache._partial_size((res, res, 3), committed)

    interrupt.reset()
    got = input_pipeline.stage_images(input_pipeline.source_of(data, 16, 3), stage)
    assert len(calls) == signal_at + calls_left
    np.testing.assert_array_equal(got, want)
    assert leftovers(cache_root) == {"temp": [], "partial": [], "progress": []}


def test_a_resumed_tfds_build_skips_the_committed_examples(
    small_chunks, tmp_path, monkeypatch, sigterm_handler
):
    data = small_chunks.data
    data.source, data.tfds_mock_examples = "celeb_a_hq", 10  # the same 10 examples every read
    want = _uninterrupted(small_chunks, tmp_path)
    calls = counting(monkeypatch, sources.Tfds, "_fit", sigterm_at(6))
    with pytest.raises(interrupt.Interrupted):
        sources.resolve(data, 16, 3).load_images()
    interrupt.reset()
    got = sources.resolve(data, 16, 3).load_images().images
    assert len(calls) == 6 + (10 - CHUNK)  # resumed after the first chunk
    np.testing.assert_array_equal(got, want)


def test_processes_sharing_a_cache_folder_build_it_once(small_chunks, tmp_path, monkeypatch):
    """Two builders of one folder: threads here, which `flock` excludes as it does processes
    (its locks belong to open files)."""
    calls = counting(monkeypatch, synthetic, "draw_face", delay=0.01)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = [
            pool.submit(sources.resolve(small_chunks.data, 16, 3).load_images) for _ in range(2)
        ]
        loaded = [np.array(r.result().images) for r in results]
    assert len(calls) == SMALL_SET  # one built, the other waited and read
    for images in loaded:
        np.testing.assert_array_equal(images, _uninterrupted(small_chunks, tmp_path))


def test_an_error_mid_decode_leaves_no_temp_files(small_chunks, tmp_path, monkeypatch):
    def fail(n):
        if n == 10:
            raise RuntimeError("a decoder crashed")

    counting(monkeypatch, synthetic, "draw_face", fail)
    with pytest.raises(RuntimeError, match="a decoder crashed"):
        sources.resolve(small_chunks.data, 16, 3).load_images()
    cache_root = pathlib.Path(small_chunks.data.cache_dir)
    left = leftovers(cache_root)
    assert left["temp"] == []
    assert [p.stat().st_size for p in left["partial"]] == [cache._partial_size((16, 16, 3), 8)]
    monkeypatch.undo()
    got = sources.resolve(small_chunks.data, 16, 3).load_images().images
    np.testing.assert_array_equal(got, _uninterrupted(small_chunks, tmp_path))


_STALLED_BUILD = """
import pathlib, sys, time
from configs import tiny
from progan_jax.data import cache, sources, synthetic

config = tiny.get_config()
config.data.synthetic_size, config.data.cache_dir = int(sys.argv[1]), sys.argv[2]
cache.CHUNK_BYTES = int(sys.argv[3])
draw = synthetic.draw_face


def stalling_draw(index, *args):
    pathlib.Path(sys.argv[4]).write_text(str(index))
    if index == int(sys.argv[5]):
        time.sleep(600)  # where the test kills the build
    return draw(index, *args)


synthetic.draw_face = stalling_draw
sources.resolve(config.data, 16, 3).load_images()
"""


def _last_drawn(path: pathlib.Path) -> int:
    text = path.read_text() if path.exists() else ""
    return int(text) if text else -1


@pytest.mark.slow
def test_a_killed_build_leaves_nothing_stale_after_the_next_start(
    small_chunks, tmp_path, monkeypatch
):
    data, drawn, stall_at = small_chunks.data, tmp_path / "drawn", 10  # in the third chunk
    command = [sys.executable, "-c", _STALLED_BUILD, str(SMALL_SET), data.cache_dir]
    process = subprocess.Popen(
        [*command, str(cache.CHUNK_BYTES), str(drawn), str(stall_at)], cwd=ROOT
    )
    deadline = time.monotonic() + 120
    while _last_drawn(drawn) < stall_at and time.monotonic() < deadline:
        assert process.poll() is None, "the build ended before it could be killed"
        time.sleep(0.02)
    assert _last_drawn(drawn) == stall_at, "the build did not reach the image it stalls at"
    process.send_signal(signal.SIGKILL)  # in the third chunk of four images
    process.wait()
    cache_root = pathlib.Path(data.cache_dir)
    (key,) = cache_root.iterdir()
    (key / "images_16.npy.otherhost.7.0123abcd.tmp").write_bytes(b"a killed writer's temp file")

    calls = counting(monkeypatch, synthetic, "draw_face")
    got = sources.resolve(data, 16, 3).load_images().images
    assert leftovers(cache_root) == {"temp": [], "partial": [], "progress": []}
    assert 0 < len(calls) < SMALL_SET  # the killed build's complete chunks were kept
    np.testing.assert_array_equal(got, _uninterrupted(small_chunks, tmp_path))
