"""benchmarks/conditional.py: the labelled Fashion-MNIST folders it writes and reads."""

import gzip
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import conditional


def write_idx(path: pathlib.Path, array: np.ndarray) -> None:
    """MNIST's IDX format, gzipped: magic (0, 0, uint8, dims), big-endian sizes, the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        size.to_bytes(4, "big") for size in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_prepared_folders_give_each_image_the_class_it_was_written_with(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 40), ("t10k", 20)):
        labels = rng.permutation(np.arange(count) % 10)
        images = np.repeat(labels * 20 + 10, 28 * 28).reshape(count, 28, 28)  # class as a gray
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    conditional.prepare(tmp_path, tmp_path / "classes")

    assert sorted(p.name for p in (tmp_path / "classes/train").iterdir()) == [
        f"{i}-{name}" for i, name in enumerate(conditional.CLASSES)
    ]
    for split, count in (("train", 40), ("heldout", 20)):
        images, labels = conditional.labelled_images(
            tmp_path / "classes" / split, tmp_path / "cache"
        )
        assert images.shape == (count, 32, 32, 3)
        assert np.bincount(labels).tolist() == [count // 10] * 10
        np.testing.assert_array_equal(images[:, 16, 16, 0], labels * 20 + 10)


def test_class_grid_gives_each_class_a_row_in_class_order():
    asked = np.random.default_rng(1).permutation(np.arange(30) % 10)
    images = np.repeat(asked.astype(np.uint8) * 25, 4 * 4 * 3).reshape(30, 4, 4, 3)
    grid = conditional.class_grid(images, asked, columns=3)  # tiles of 64 pixels
    assert grid.shape == (10 * 64, 3 * 64, 3)
    tiles = grid[32::64, 32::64, 0]  # each tile's centre: [row, column]
    np.testing.assert_array_equal(tiles, np.repeat(np.arange(10)[:, None] * 25, 3, axis=1))
