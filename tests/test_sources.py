"""Data sources (progan_jax.data.sources): the official CelebA crop and box filter, TFDS data
sets, image folders and their rules for files they cannot use, and the decoding threads."""

import logging
import os
import pathlib
import threading

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from configs import tiny
from progan_jax.data import decode, sources
from progan_jax.runtime import errors, interrupt
from tests.builds import counting, leftovers, sigterm_at

RED = (255, 0, 0)


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
        images = sources.resolve(data_config.data, 16, 3).load_images().images
    assert images.shape == (3, 16, 16, 3)
    want = _numpy_box_pyramid(sources.celeba_crop(marker), 3)
    np.testing.assert_array_equal(images[0], want)
    # Cached: a second load needs no TFDS at all.
    again = sources.resolve(data_config.data, 16, 3).load_images().images
    np.testing.assert_array_equal(again, images)


def test_celeba_hq_and_other_tfds_sets_with_mock_data(data_config):
    data_config.data.source = "celeb_a_hq"
    with tfds.testing.mock_data(num_examples=5):
        hq = sources.resolve(data_config.data, 16, 3).load_images().images
    assert hq.shape == (5, 16, 16, 3)
    data_config.data.source = "tfds"
    data_config.data.tfds_name = "mnist"  # 28x28 grayscale, resized up to 32, to RGB
    with tfds.testing.mock_data(num_examples=6):
        digits = sources.resolve(data_config.data, 32, 3).load_images().images
    assert digits.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(digits[..., 0], digits[..., 2])


def test_missing_celeba_says_where_to_put_the_files(data_config):
    data_config.data.source = "celeb_a"
    with pytest.raises(errors.DataSetMissingError) as error:
        sources.resolve(data_config.data, 16, 3).load_images()
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
    loaded = sources.resolve(data_config.data, 16, 3).load_images()
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
    gray = sources.resolve(data_config.data, 16, 1).load_images().images
    assert gray.shape == (5, 16, 16, 1)
    np.testing.assert_array_equal(gray[0], 77)


def test_image_folder_without_usable_images_is_an_error(data_config, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    (root / "bad.png").write_bytes(b"garbage")
    data_config.data.source = "image_folder"
    data_config.data.path = str(root)
    with pytest.raises(errors.DataSetMissingError, match="no usable image"):
        sources.resolve(data_config.data, 16, 3).load_images()
    data_config.data.path = str(tmp_path / "nowhere")
    with pytest.raises(errors.DataSetMissingError, match="not a directory"):
        sources.resolve(data_config.data, 16, 3).load_images()


def test_sigterm_stops_the_decoding_threads(data_config, tmp_path, monkeypatch, sigterm_handler):
    root, workers = tmp_path / "images", os.cpu_count() or 1
    for i in range(20 + 4 * workers):
        _write(root / f"{i:03d}.png", np.full((8, 8, 3), i, np.uint8))
    data_config.data.source = "image_folder"
    data_config.data.path = str(root)
    decoders, sigterm = set(), sigterm_at(5)

    def on_call(n):
        decoders.add(threading.current_thread())
        sigterm(n)

    calls = counting(monkeypatch, decode, "decode_file", on_call, delay=0.02)
    with pytest.raises(interrupt.Interrupted):
        sources.resolve(data_config.data, 16, 3).load_images()
    stopped_at = len(calls)
    # Every thread that decoded has ended (its pool was shut down), so none can decode on.
    assert decoders and not [thread for thread in decoders if thread.is_alive()]
    assert len(calls) == stopped_at  # no thread decodes on
    assert stopped_at <= 5 + 3 * workers  # the look-ahead, not every file
    assert leftovers(pathlib.Path(data_config.data.cache_dir))["temp"] == []


@pytest.fixture
def folder(tmp_path):
    """An image folder source, its folder still empty."""
    data = tiny.get_config().data
    data.source = "image_folder"
    data.path = str(tmp_path / "images")
    data.cache_dir = str(tmp_path / "cache")
    pathlib.Path(data.path).mkdir()
    return data


def test_files_with_other_extensions_are_named_in_a_warning(folder, caplog):
    root = pathlib.Path(folder.path)
    Image.new("RGB", (16, 16), RED).save(root / "a.png")
    for name in ("notes.txt", "photo.heic", "clip.heic"):
        (root / name).write_bytes(b"not read")
    with caplog.at_level(logging.WARNING):
        assert len(sources.resolve(folder, 16, 3).load_images().images) == 1
    (warning,) = [r.getMessage() for r in caplog.records if "Ignoring" in r.getMessage()]
    assert "3 file(s)" in warning and ".heic: 2" in warning and ".txt: 1" in warning


def _folder_of(root: pathlib.Path, good: int, broken: int) -> None:
    for i in range(good):
        Image.new("RGB", (16, 16), RED).save(root / f"good{i}.png")
    for i in range(broken):
        (root / f"broken{i}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")


def test_a_folder_where_most_files_fail_is_an_error(folder):
    _folder_of(pathlib.Path(folder.path), good=2, broken=3)
    with pytest.raises(errors.DataSetMissingError, match="3 of 5 files") as error:
        sources.resolve(folder, 16, 3).load_images()
    assert "broken0.jpg" in str(error.value)
    assert not list(pathlib.Path(folder.cache_dir).rglob("*.npy*"))  # nothing cached


def test_a_folder_where_half_the_files_fail_is_used(folder):
    _folder_of(pathlib.Path(folder.path), good=2, broken=2)
    loaded = sources.resolve(folder, 16, 3).load_images()
    assert len(loaded.images) == 2 and len(loaded.skipped) == 2
    again = sources.resolve(
        folder, 16, 3
    ).load_images()  # from the cache, the skipped files still known
    assert again.skipped == loaded.skipped


@pytest.mark.parametrize("max_images,total", [(None, 5), (3, 3)])
def test_decoding_reports_n_of_the_folders_files(folder, monkeypatch, caplog, max_images, total):
    from progan_jax.runtime import progress_bar

    track = progress_bar.track
    monkeypatch.setattr(progress_bar, "on_terminal", lambda: False)
    monkeypatch.setattr(
        progress_bar, "track", lambda *args, **kwargs: track(*args, **kwargs, every_s=0)
    )
    caplog.set_level(logging.INFO)
    _folder_of(pathlib.Path(folder.path), good=5, broken=0)
    folder.max_images = max_images
    sources.resolve(folder, 16, 3).load_images()
    assert f"decoding image_folder: 2 of {total}" in caplog.text


BLUE = (0, 0, 255)


def test_subfolders_label_each_image_by_its_class_folder(folder):
    """Classes are the first-level subfolders, sorted; a file that cannot be decoded drops out
    of images and labels alike, so each image keeps its own class."""
    root = pathlib.Path(folder.path)
    for name, colour, count in (("dogs", BLUE, 3), ("cats", RED, 2)):
        (root / name / "deeper").mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (16, 16), colour).save(root / name / "deeper" / f"{i}.png")
    (root / "cats" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    folder.labels = "subfolders"
    labels = sources.resolve(folder, 16, 3).load_labels()
    images = sources.resolve(folder, 16, 3).load_images().images
    assert labels.names == ("cats", "dogs")
    assert len(labels.ids) == len(images) == 5
    red = images[:, 0, 0, 0] > 128
    np.testing.assert_array_equal(labels.ids, np.where(red, 0, 1))
    np.testing.assert_array_equal(labels.counts(), [2, 3])
    cached = list(pathlib.Path(folder.cache_dir).rglob("labels_subfolders.npz"))
    assert len(cached) == 1  # beside the images; a second call reads it
    assert sources.resolve(folder, 16, 3).load_labels().names == ("cats", "dogs")


def test_images_outside_a_class_folder_are_an_error(folder):
    root = pathlib.Path(folder.path)
    (root / "cats").mkdir()
    Image.new("RGB", (16, 16), RED).save(root / "cats" / "a.png")
    Image.new("RGB", (16, 16), RED).save(root / "stray.png")
    folder.labels = "subfolders"
    no_class = r"have no class folder, e\.g\. stray\.png"
    with pytest.raises(errors.DataSetMissingError, match=no_class):
        sources.resolve(folder, 16, 3).load_labels()


def test_tfds_labels_come_from_the_feature_and_follow_the_images(data_config):
    data = data_config.data
    data.source, data.tfds_name, data.labels = "tfds", "mnist", "feature"
    data.max_images = 5
    with tfds.testing.mock_data(num_examples=8):
        labels = sources.resolve(data, 32, 1).load_labels()
        images = sources.resolve(data, 32, 1).load_images().images
    assert len(labels.ids) == len(images) == 5
    assert labels.names == tuple(str(d) for d in range(10))
    assert ((labels.ids >= 0) & (labels.ids < 10)).all()
    data.label_key, data.max_images = "digit", None
    with (
        tfds.testing.mock_data(num_examples=8),
        pytest.raises(
            errors.DataSetMissingError, match="no feature 'digit'; its features are image, label"
        ),
    ):
        sources.resolve(data, 32, 1).load_labels()


def test_synthetic_faces_have_skin_tone_classes(data):
    """Darker classes have darker faces: the class is the skin colour the face is drawn with."""
    data.synthetic_size = 60
    data.labels = "skin_tone"
    labels = sources.resolve(data, 32, 3).load_labels()
    images = sources.resolve(data, 32, 3).load_images().images
    assert labels.names == ("light", "medium", "dark")
    # The face's centre is skin (eyes above, mouth below it).
    centres = []
    for i in range(len(images)):
        rng = np.random.default_rng([data.synthetic_seed, i])
        rng.uniform(0, 255, (2, 3))
        cx, cy = rng.uniform(0.38, 0.62, 2)
        centres.append(images[i, int(cy * 32), int(cx * 32)].astype(float).mean())
    centres = np.asarray(centres)
    means = [centres[labels.ids == c].mean() for c in range(3)]
    assert means[0] > means[1] > means[2], means
    assert (labels.counts() > 0).all()


@pytest.mark.parametrize(
    "fields, want",
    [
        ({"source": "synthetic"}, "synthetic-16px-3ch-6199592a4b42"),
        ({"source": "synthetic", "max_images": 7}, "synthetic-16px-3ch-b4bb193fef0b"),
        ({"source": "image_folder", "path": "faces"}, "image_folder-16px-3ch-38aa0a691d41"),
        ({"source": "celeb_a"}, "celeb_a-16px-3ch-94b844e27b74"),
        ({"source": "celeb_a_hq", "tfds_mock_examples": 10}, "celeb_a_hq-16px-3ch-bd9c8bc36ccb"),
        (
            {"source": "tfds", "tfds_name": "mnist", "image_key": "image", "split": "test"},
            "tfds-16px-3ch-7afcef6e1cb5",
        ),
    ],
)
def test_cache_keys_stay_the_same(fields, want, tmp_path, monkeypatch):
    """Keys as the code before `Source` named them: existing caches must still be found. The
    folder is relative and its files' sizes and times fixed, so its fingerprint is too."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "faces" / "cats").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.jpg", "c.PNG"]):
        path = tmp_path / "faces" / "cats" / name
        path.write_bytes(b"x" * (10 + i))
        os.utime(path, ns=(1_600_000_000_000_000_000 + i,) * 2)
    data = tiny.get_config().data
    data.update(fields)
    assert sources.resolve(data, 16, 3).key == want
    assert sources.resolve(data, 16, 3, sources.Shard(1, 2)).key == f"{want}-shard1of2"


def test_a_folder_is_listed_and_fingerprinted_once_per_source(folder, monkeypatch):
    """Naming a folder's caches stats every file: a run that keeps its source does it once,
    however many stages and labels it reads."""
    for name in ("cats", "dogs"):
        (pathlib.Path(folder.path) / name).mkdir()
        Image.new("RGB", (16, 16), RED).save(pathlib.Path(folder.path) / name / "a.png")
    folder.labels = "subfolders"
    listed = counting(monkeypatch, sources, "_find_images")
    source = sources.resolve(folder, 16, 3)
    assert source.load_labels().names == ("cats", "dogs")
    source.load_images()
    for size in (16, 8, 4):
        source.cache_path(size)
    assert len(listed) == 1
