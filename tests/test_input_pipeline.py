"""Input pipeline: sources, crops, box filtering, the deterministic stream, sharding."""

import concurrent.futures
import hashlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from configs import tiny
from progan_jax import interrupt, parallel, train_step
from progan_jax.data import cache, decode, errors, input_pipeline, sources, synthetic


@pytest.fixture
def data_config(tmp_path):
    config = tiny.get_config()
    config.data.source = "synthetic"
    config.data.synthetic_size = 40
    config.data.cache_dir = str(tmp_path / "cache")
    config.data.data_dir = str(tmp_path / "tfds")
    return config


ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL_SET = 20  # synthetic 16x16 images, committed in chunks of CHUNK images
CHUNK = 4


@pytest.fixture
def small_chunks(data_config, monkeypatch):
    """20 images in chunks of 4: an interrupted build has complete chunks to keep."""
    data_config.data.synthetic_size = SMALL_SET
    monkeypatch.setattr(cache, "CHUNK_BYTES", CHUNK * 16 * 16 * 3)
    return data_config


@pytest.fixture
def sigterm_handler():
    interrupt.reset()
    with interrupt.sigterm_requests_stop():
        yield
    interrupt.reset()


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _numpy_box_pyramid(image: np.ndarray, levels: int) -> np.ndarray:
    """The official dataset tool: repeated 2x2 float averaging, each level rounded for storage."""
    x = image.astype(np.float32)
    for _ in range(levels):
        x = (x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2]) * 0.25
    return np.rint(x).clip(0, 255).astype(np.uint8)


def test_box_filter_matches_the_official_pyramid():
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for levels in range(4):
        got = sources.box_downsample(images, 2**levels)
        want = np.stack([_numpy_box_pyramid(im, levels) for im in images])
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="power of two"):
        sources.box_downsample(images, 3)


def _marker_image() -> np.ndarray:
    """A 218x178 image whose official 128x128 crop has markers at its corners."""
    image = np.full((218, 178, 3), 10, np.uint8)
    image[57:185, 25:153] = 50  # the crop: rows 57..184, columns 25..152
    image[57, 25] = (255, 0, 0)
    image[184, 152] = (0, 255, 0)
    image[56, 25] = image[57, 24] = (0, 0, 255)  # just outside
    return image


def test_celeba_crop_is_the_official_one():
    crop = sources.celeba_crop(_marker_image())
    assert crop.shape == (128, 128, 3)
    np.testing.assert_array_equal(crop[0, 0], (255, 0, 0))
    np.testing.assert_array_equal(crop[-1, -1], (0, 255, 0))
    assert not np.any((crop == (0, 0, 255)).all(-1)) and not np.any(crop == 10)


def test_celeba_through_tfds(data_config):
    """The celeb_a path end to end: TFDS (mocked with marker images), crop, box filter, cache."""
    marker = _marker_image()

    def as_dataset(self, split, **kwargs):  # the images encoded: the pipeline skips decoding
        return tf.data.Dataset.from_tensors({"image": tf.io.encode_png(marker)}).repeat(3)

    data_config.data.source = "celeb_a"
    data_config.model.resolution = 16  # 128 crop -> 16 by 8x8 box filtering
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        images = sources.load_images(data_config.data, 16, 3).images
    assert images.shape == (3, 16, 16, 3)
    want = _numpy_box_pyramid(sources.celeba_crop(marker), 3)
    np.testing.assert_array_equal(images[0], want)
    # Cached: a second load needs no TFDS at all.
    again = sources.load_images(data_config.data, 16, 3).images
    np.testing.assert_array_equal(again, images)


def test_celeba_hq_and_other_tfds_sets_with_mock_data(data_config):
    data_config.data.source = "celeb_a_hq"
    with tfds.testing.mock_data(num_examples=5):
        hq = sources.load_images(data_config.data, 16, 3).images
    assert hq.shape == (5, 16, 16, 3)
    data_config.data.source = "tfds"
    data_config.data.tfds_name = "mnist"  # 28x28 grayscale, resized up to 32, to RGB
    with tfds.testing.mock_data(num_examples=6):
        digits = sources.load_images(data_config.data, 32, 3).images
    assert digits.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(digits[..., 0], digits[..., 2])


def test_missing_celeba_says_where_to_put_the_files(data_config):
    data_config.data.source = "celeb_a"
    with pytest.raises(errors.DataSetMissingError) as error:
        sources.load_images(data_config.data, 16, 3)
    message = str(error.value)
    assert "img_align_celeba.zip" in message and "list_eval_partition.txt" in message
    assert str(pathlib.Path(data_config.data.data_dir) / "downloads" / "manual") in message
    assert "--config.data.download=True" in message


def _write(path: pathlib.Path, array: np.ndarray, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def test_image_folder_handles_odd_and_corrupt_files(data_config, tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    _write(root / "rgb.jpg", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    _write(root / "nested" / "deeper" / "gray.png", np.full((30, 30), 77, np.uint8))
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    _write(root / "nested" / "rgba.png", rgba)
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 20:40] = 255  # the centre square is white, the sides black
    _write(root / "wide.webp", wide)
    _write(root / "small.bmp", np.full((4, 4, 3), 30, np.uint8))
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "text.png").write_text("hello")
    (root / "notes.txt").write_text("not an image")

    data_config.data.source = "image_folder"
    data_config.data.path = str(root)
    loaded = sources.load_images(data_config.data, 16, 3)
    assert loaded.images.shape == (5, 16, 16, 3)
    assert len(loaded.skipped) == 2
    assert any("broken.jpg" in s for s in loaded.skipped)
    # Files are read in sorted path order: nested/deeper/gray, nested/rgba, rgb, small, wide.
    names = ["gray", "rgba", "rgb", "small", "wide"]
    by_name = dict(zip(names, loaded.images, strict=True))
    np.testing.assert_array_equal(by_name["gray"], 77)  # grayscale -> equal RGB channels
    assert (by_name["rgba"] == (227, 127, 127)).all()  # half-transparent red on white
    assert by_name["wide"].min() > 200  # centre-cropped: only the white square remains
    np.testing.assert_array_equal(by_name["small"], 30)  # 4x4 resized up
    gray = sources.load_images(data_config.data, 16, 1).images
    assert gray.shape == (5, 16, 16, 1)
    np.testing.assert_array_equal(gray[0], 77)


def test_image_folder_without_usable_images_is_an_error(data_config, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    (root / "bad.png").write_bytes(b"garbage")
    data_config.data.source = "image_folder"
    data_config.data.path = str(root)
    with pytest.raises(errors.DataSetMissingError, match="no usable image"):
        sources.load_images(data_config.data, 16, 3)
    data_config.data.path = str(tmp_path / "nowhere")
    with pytest.raises(errors.DataSetMissingError, match="not a directory"):
        sources.load_images(data_config.data, 16, 3)


def test_synthetic_faces_are_deterministic_and_varied():
    a = synthetic.draw_faces(6, 32)
    np.testing.assert_array_equal(a, synthetic.draw_faces(6, 32))
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.uint8
    assert len({im.tobytes() for im in a}) == 6
    assert not np.array_equal(a, synthetic.draw_faces(6, 32, seed=1))
    # Any power of two, and the same face at another resolution is the same drawing.
    big = synthetic.draw_face(3, 64)
    assert np.abs(sources.box_downsample(big[None], 2)[0].astype(int) - a[3]).mean() < 8


def _stream(images, **kwargs):
    defaults = dict(seed=3, start=0, batch_size=8, mirror=False)
    return input_pipeline.batches(images, **{**defaults, **kwargs})


def _decoded(iterator, n):
    """The next `n` batches as the step sees them: float32 reals."""
    return [train_step.decode_reals(b, np) for b in _take(iterator, n)]


# sha256 (first 16 hex digits) of the float32 reals of 4 mirrored batches of 8 drawn from 13
# random images, as the stream delivered them when it converted and mirrored on the host.
_GOLDEN = {
    "whole": ({}, "52b809d3d31504aa"),
    "process 1 of 2": (dict(start=40, process_index=1, process_count=2), "fee2c29c83677941"),
    "shard 1 of 2": (
        dict(start=16, process_index=1, process_count=2, sharded=True),
        "2b816003e07f8c6e",
    ),
}


@pytest.mark.parametrize("case", _GOLDEN)
def test_decoded_stream_is_bit_identical_to_the_float_stream_of_before(case):
    """uint8 with flags, decoded, is exactly what the host used to convert and mirror."""
    kwargs, digest = _GOLDEN[case]
    images = np.random.default_rng(5).integers(0, 256, (13, 4, 4, 3), dtype=np.uint8)
    reals = np.concatenate(_decoded(_stream(images, mirror=True, **kwargs), 4))
    assert reals.dtype == np.float32
    assert hashlib.sha256(reals.tobytes()).hexdigest()[:16] == digest


def test_batches_are_unmirrored_uint8_with_the_hashed_mirror_flags():
    images = np.random.default_rng(6).integers(0, 256, (13, 4, 4, 3), dtype=np.uint8)
    for mirror in (False, True):
        batch = next(_stream(images, mirror=mirror, start=16))
        assert set(batch) == {"images", "mirror"}
        assert batch["images"].dtype == np.uint8 and batch["images"].shape == (8, 4, 4, 3)
        assert batch["mirror"].dtype == bool and batch["mirror"].shape == (8,)
        flags = input_pipeline.mirror_flags(3, np.arange(16, 24)) if mirror else np.zeros(8)
        np.testing.assert_array_equal(batch["mirror"], flags)
        rows = {x.tobytes() for x in batch["images"]}
        assert rows <= {x.tobytes() for x in images}  # as cached, whatever the flag


def test_stream_values_shapes_and_order_follow_the_seed():
    images = np.random.default_rng(0).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    first = _decoded(_stream(images), 5)
    assert all(b.shape == (8, 4, 4, 3) and b.dtype == np.float32 for b in first)
    stacked = np.concatenate(first)
    assert stacked.min() >= -1.0 and stacked.max() <= 1.0
    # 40 positions = two epochs of 20, each a permutation of the whole set.
    as_uint8 = np.rint((stacked + 1) * 127.5).astype(np.uint8)
    for epoch in (as_uint8[:20], as_uint8[20:40]):
        assert sorted(x.tobytes() for x in epoch) == sorted(x.tobytes() for x in images)
    np.testing.assert_array_equal(np.concatenate(_decoded(_stream(images), 5)), stacked)
    assert not np.array_equal(np.concatenate(_decoded(_stream(images, seed=4), 5)), stacked)


def test_stream_resumes_mid_way():
    images = np.random.default_rng(1).integers(0, 256, (13, 4, 4, 3), dtype=np.uint8)
    whole = _take(_stream(images, mirror=True), 6)
    resumed = _take(_stream(images, mirror=True, start=3 * 8), 3)
    for a, b in zip(whole[3:], resumed, strict=True):
        for field in ("images", "mirror"):
            np.testing.assert_array_equal(a[field], b[field])


def test_mirror_flips_about_half_the_images():
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(1, 4, 4, 3)
    images = np.repeat(image, 64, axis=0)
    batch = train_step.decode_reals(next(_stream(images, batch_size=64, mirror=True)), np)
    flat = np.rint((batch + 1) * 127.5).astype(np.uint8)
    flipped = np.array([np.array_equal(x, image[0, :, ::-1]) for x in flat])
    kept = np.array([np.array_equal(x, image[0]) for x in flat])
    assert (flipped | kept).all()
    assert 20 < flipped.sum() < 44


def test_process_shares_are_disjoint_and_make_up_the_global_batch():
    images = np.random.default_rng(2).integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    whole = _decoded(_stream(images, mirror=True), 4)
    shares = [
        _decoded(_stream(images, mirror=True, process_index=i, process_count=4), 4)
        for i in range(4)
    ]
    for b in range(4):
        parts = [share[b] for share in shares]
        assert all(p.shape == (2, 4, 4, 3) for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), whole[b])
    positions = [np.arange(*input_pipeline.local_rows(8, i, 4)) for i in range(4)]
    assert len(set(np.concatenate(positions))) == 8
    with pytest.raises(ValueError, match="does not divide by the 3 processes"):
        input_pipeline.local_rows(8, 0, 3)


def test_stage_batches_are_sharded_over_eight_devices(data_config):
    mesh = parallel.make_mesh()
    local = input_pipeline.stage_batches(data_config, stage=1, start=0, batch_size=16)
    want = next(input_pipeline.stage_batches(data_config, stage=1, start=0, batch_size=16))
    batch = next(input_pipeline.prefetch_to_mesh(local, mesh))
    assert batch["images"].shape == (16, 8, 8, 3) and batch["images"].dtype == np.uint8
    assert batch["mirror"].shape == (16,) and batch["mirror"].dtype == bool
    for field, rows in (("images", (2, 8, 8, 3)), ("mirror", (2,))):
        assert len(batch[field].addressable_shards) == 8
        assert {s.data.shape for s in batch[field].addressable_shards} == {rows}
        assert batch[field].sharding.spec == jax.sharding.PartitionSpec("data")
        np.testing.assert_array_equal(batch[field], want[field])
    # The step's decoding on the devices is the host's reference, bit for bit.
    reals = jax.jit(train_step.decode_reals)(batch)
    np.testing.assert_array_equal(reals, train_step.decode_reals(want, np))
    # The stage's images are the box-filtered base images.
    base = sources.load_images(data_config.data, 16, 3).images
    stage = input_pipeline.stage_images(data_config.data, 16, 3, 1)
    np.testing.assert_array_equal(stage, sources.box_downsample(np.asarray(base), 2))


def test_prepare_all_stages_caches_every_stage_once(data_config, monkeypatch):
    data, faces = data_config.data, synthetic.draw_faces(40, 16)
    want = [sources.box_downsample(faces, 4 // 2**stage) for stage in range(3)]
    drawn = _counting(monkeypatch, synthetic, "draw_face")
    filtered = _counting(monkeypatch, sources, "box_downsample")
    input_pipeline.prepare_all_stages(data_config, first_stage=1)
    (key,) = pathlib.Path(data.cache_dir).iterdir()
    assert sorted(p.name for p in key.glob("*.npy")) == ["images_16.npy", "images_8.npy"]
    input_pipeline.prepare_all_stages(data_config)
    assert sorted(p.name for p in key.glob("*.npy")) == [f"images_{r}.npy" for r in (16, 4, 8)]
    done = len(drawn), len(filtered)
    input_pipeline.prepare_all_stages(data_config)  # all cached: opened, nothing built
    for stage in range(3):  # each stage's images are read from its cache
        np.testing.assert_array_equal(input_pipeline.stage_images(data, 16, 3, stage), want[stage])
    assert (len(drawn), len(filtered)) == done


def _uninterrupted(config, tmp_path, stage: int = 2) -> np.ndarray:
    clean = config.data.copy_and_resolve_references()
    clean.cache_dir = str(tmp_path / "uninterrupted")
    return np.array(input_pipeline.stage_images(clean, 16, 3, stage))


def _leftovers(cache_root: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    return {
        "temp": sorted(cache_root.rglob("*.tmp")),
        "partial": sorted(cache_root.rglob("*.partial")),
        "progress": sorted(cache_root.rglob("*.progress.json")),
    }


def _counting(monkeypatch, module, name: str, on_call=None, delay: float = 0.0) -> list[int]:
    """Counts calls of `module.name`, slowed by `delay` s; `on_call(n)` runs after the n-th."""
    original, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        time.sleep(delay)
        result = original(*args, **kwargs)
        calls.append(len(calls) + 1)
        if on_call:
            on_call(len(calls))
        return result

    monkeypatch.setattr(module, name, wrapper)
    return calls


def _sigterm_at(call: int):
    def on_call(n):
        if n == call:
            os.kill(os.getpid(), signal.SIGTERM)

    return on_call


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
        input_pipeline.stage_images(data, 16, 3, 2)  # the base is decoded; box filtering stops
    calls = _counting(monkeypatch, module, function, _sigterm_at(signal_at))
    with pytest.raises(interrupt.Interrupted):
        input_pipeline.stage_images(data, 16, 3, stage)
    assert len(calls) == signal_at  # stopped at the signal, not at the end of the set
    cache_root = pathlib.Path(data.cache_dir)
    left = _leftovers(cache_root)
    assert left["temp"] == []
    (partial,) = left["partial"]  # the complete chunks only, kept for the restart
    res = 2 ** (stage + 2)
    assert partial.stat().st_size == cache._partial_size((res, res, 3), committed)

    interrupt.reset()
    got = input_pipeline.stage_images(data, 16, 3, stage)
    assert len(calls) == signal_at + calls_left
    np.testing.assert_array_equal(got, want)
    assert _leftovers(cache_root) == {"temp": [], "partial": [], "progress": []}


def test_a_resumed_tfds_build_skips_the_committed_examples(
    small_chunks, tmp_path, monkeypatch, sigterm_handler
):
    data = small_chunks.data
    data.source, data.tfds_mock_examples = "celeb_a_hq", 10  # the same 10 examples every read
    want = _uninterrupted(small_chunks, tmp_path)
    calls = _counting(monkeypatch, sources, "_fit_tfds_image", _sigterm_at(6))
    with pytest.raises(interrupt.Interrupted):
        sources.load_images(data, 16, 3)
    interrupt.reset()
    got = sources.load_images(data, 16, 3).images
    assert len(calls) == 6 + (10 - CHUNK)  # resumed after the first chunk
    np.testing.assert_array_equal(got, want)


def test_processes_sharing_a_cache_folder_build_it_once(small_chunks, tmp_path, monkeypatch):
    """Two builders of one folder: threads here, which `flock` excludes as it does processes
    (its locks belong to open files)."""
    calls = _counting(monkeypatch, synthetic, "draw_face", delay=0.01)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = [pool.submit(sources.load_images, small_chunks.data, 16, 3) for _ in range(2)]
        loaded = [np.array(r.result().images) for r in results]
    assert len(calls) == SMALL_SET  # one built, the other waited and read
    for images in loaded:
        np.testing.assert_array_equal(images, _uninterrupted(small_chunks, tmp_path))


def test_sigterm_stops_the_decoding_threads(data_config, tmp_path, monkeypatch, sigterm_handler):
    root, workers = tmp_path / "images", os.cpu_count() or 1
    for i in range(20 + 4 * workers):
        _write(root / f"{i:03d}.png", np.full((8, 8, 3), i, np.uint8))
    data_config.data.source = "image_folder"
    data_config.data.path = str(root)
    calls = _counting(monkeypatch, decode, "decode_file", _sigterm_at(5), delay=0.02)
    with pytest.raises(interrupt.Interrupted):
        sources.load_images(data_config.data, 16, 3)
    stopped_at = len(calls)
    time.sleep(0.3)
    assert len(calls) == stopped_at  # no thread decodes on
    assert stopped_at <= 5 + 3 * workers  # the look-ahead, not every file
    assert _leftovers(pathlib.Path(data_config.data.cache_dir))["temp"] == []


def test_an_error_mid_decode_leaves_no_temp_files(small_chunks, tmp_path, monkeypatch):
    def fail(n):
        if n == 10:
            raise RuntimeError("a decoder crashed")

    _counting(monkeypatch, synthetic, "draw_face", fail)
    with pytest.raises(RuntimeError, match="a decoder crashed"):
        sources.load_images(small_chunks.data, 16, 3)
    cache_root = pathlib.Path(small_chunks.data.cache_dir)
    left = _leftovers(cache_root)
    assert left["temp"] == []
    assert [p.stat().st_size for p in left["partial"]] == [cache._partial_size((16, 16, 3), 8)]
    monkeypatch.undo()
    got = sources.load_images(small_chunks.data, 16, 3).images
    np.testing.assert_array_equal(got, _uninterrupted(small_chunks, tmp_path))


_SLOW_BUILD = """
import pathlib, sys, time
from configs import tiny
from progan_jax.data import cache, sources, synthetic

config = tiny.get_config()
config.data.synthetic_size, config.data.cache_dir = int(sys.argv[1]), sys.argv[2]
cache.CHUNK_BYTES = int(sys.argv[3])
draw = synthetic.draw_face


def slow_draw(index, *args):
    time.sleep(0.1)
    pathlib.Path(sys.argv[4]).write_text(str(index))
    return draw(index, *args)


synthetic.draw_face = slow_draw
sources.load_images(config.data, 16, 3)
"""


def _last_drawn(path: pathlib.Path) -> int:
    text = path.read_text() if path.exists() else ""
    return int(text) if text else -1


def test_a_killed_build_leaves_nothing_stale_after_the_next_start(
    small_chunks, tmp_path, monkeypatch
):
    data, drawn = small_chunks.data, tmp_path / "drawn"
    command = [sys.executable, "-c", _SLOW_BUILD, str(SMALL_SET), data.cache_dir]
    process = subprocess.Popen([*command, str(cache.CHUNK_BYTES), str(drawn)], cwd=ROOT)
    deadline = time.monotonic() + 120
    while _last_drawn(drawn) < 9 and time.monotonic() < deadline:
        assert process.poll() is None, "the build ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # in the third chunk of four images
    process.wait()
    cache_root = pathlib.Path(data.cache_dir)
    (key,) = cache_root.iterdir()
    (key / "images_16.npy.otherhost.7.0123abcd.tmp").write_bytes(b"a killed writer's temp file")

    calls = _counting(monkeypatch, synthetic, "draw_face")
    got = sources.load_images(data, 16, 3).images
    assert _leftovers(cache_root) == {"temp": [], "partial": [], "progress": []}
    assert 0 < len(calls) < SMALL_SET  # the killed build's complete chunks were kept
    np.testing.assert_array_equal(got, _uninterrupted(small_chunks, tmp_path))


def test_sharded_streams_read_only_their_shard_and_resume():
    images = synthetic.draw_faces(10, 4)
    for index in range(2):
        first, last = sources.Shard(index, 2).bounds(10)
        shard = images[first:last]
        stream = dict(seed=3, batch_size=4, process_index=index, process_count=2, sharded=True)
        whole = _decoded(_stream(shard, **stream), 6)  # 12 rows: more than an epoch of 5
        as_uint8 = np.rint((np.concatenate(whole) + 1) * 127.5).astype(np.uint8)
        own = {x.tobytes() for x in shard}
        assert {x.tobytes() for x in as_uint8} == own
        assert len({x.tobytes() for x in as_uint8[:5]}) == 5  # a permutation per epoch
        resumed = _decoded(_stream(shard, **{**stream, "start": 3 * 4}), 3)
        for a, b in zip(whole[3:], resumed, strict=True):
            np.testing.assert_array_equal(a, b)
