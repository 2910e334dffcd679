"""Input pipeline: sources, crops, box filtering, the deterministic stream, sharding."""

import pathlib

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from configs import tiny
from progan_jax import input_pipeline, parallel, sources, synthetic


@pytest.fixture
def data_config(tmp_path):
    config = tiny.get_config()
    config.data.source = "synthetic"
    config.data.synthetic_size = 40
    config.data.cache_dir = str(tmp_path / "cache")
    config.data.data_dir = str(tmp_path / "tfds")
    return config


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

    def as_dataset(self, split, **kwargs):
        return tf.data.Dataset.from_tensors({"image": marker}).repeat(3)

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
    with pytest.raises(sources.DataSetMissingError) as error:
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
    assert (by_name["rgba"][..., 0] == 200).all()
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
    with pytest.raises(sources.DataSetMissingError, match="no usable image"):
        sources.load_images(data_config.data, 16, 3)
    data_config.data.path = str(tmp_path / "nowhere")
    with pytest.raises(sources.DataSetMissingError, match="not a directory"):
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


def test_stream_values_shapes_and_order_follow_the_seed():
    images = np.random.default_rng(0).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    first = _take(_stream(images), 5)
    assert all(b.shape == (8, 4, 4, 3) and b.dtype == np.float32 for b in first)
    stacked = np.concatenate(first)
    assert stacked.min() >= -1.0 and stacked.max() <= 1.0
    # 40 positions = two epochs of 20, each a permutation of the whole set.
    as_uint8 = np.rint((stacked + 1) * 127.5).astype(np.uint8)
    for epoch in (as_uint8[:20], as_uint8[20:40]):
        assert sorted(x.tobytes() for x in epoch) == sorted(x.tobytes() for x in images)
    np.testing.assert_array_equal(np.concatenate(_take(_stream(images), 5)), stacked)
    assert not np.array_equal(np.concatenate(_take(_stream(images, seed=4), 5)), stacked)


def test_stream_resumes_mid_way():
    images = np.random.default_rng(1).integers(0, 256, (13, 4, 4, 3), dtype=np.uint8)
    whole = _take(_stream(images, mirror=True), 6)
    resumed = _take(_stream(images, mirror=True, start=3 * 8), 3)
    for a, b in zip(whole[3:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_mirror_flips_about_half_the_images():
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(1, 4, 4, 3)
    images = np.repeat(image, 64, axis=0)
    batch = next(_stream(images, batch_size=64, mirror=True))
    flat = np.rint((batch + 1) * 127.5).astype(np.uint8)
    flipped = np.array([np.array_equal(x, image[0, :, ::-1]) for x in flat])
    kept = np.array([np.array_equal(x, image[0]) for x in flat])
    assert (flipped | kept).all()
    assert 20 < flipped.sum() < 44


def test_process_shares_are_disjoint_and_make_up_the_global_batch():
    images = np.random.default_rng(2).integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    whole = _take(_stream(images, mirror=True), 4)
    shares = [
        _take(_stream(images, mirror=True, process_index=i, process_count=4), 4) for i in range(4)
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
    batch = next(input_pipeline.prefetch_to_mesh(local, mesh))
    assert batch.shape == (16, 8, 8, 3)
    assert len(batch.addressable_shards) == 8
    assert {s.data.shape for s in batch.addressable_shards} == {(2, 8, 8, 3)}
    assert batch.sharding.spec == jax.sharding.PartitionSpec("data")
    # The stage's images are the box-filtered base images.
    base = sources.load_images(data_config.data, 16, 3).images
    stage = input_pipeline.stage_images(data_config.data, 16, 3, 1)
    np.testing.assert_array_equal(stage, sources.box_downsample(np.asarray(base), 2))
