"""Image files decoded as a photo library shows them (progan_jax.data.decode)."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from progan_jax.data import decode

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
WHITE = decode.BACKGROUND
EXIF_ORIENTATION = 0x0112


def _decoded(path: pathlib.Path, resolution: int = 16, channels: int = 3) -> np.ndarray:
    result = decode.decode_file(path, resolution, channels)
    assert isinstance(result, np.ndarray), result
    return result


def _halves(left, right, size: int = 16) -> np.ndarray:
    image = np.zeros((size, size, 3), np.uint8)
    image[:, : size // 2], image[:, size // 2 :] = left, right
    return image


def test_exif_orientation_is_applied(tmp_path):
    """Stored top red, bottom blue, with orientation 6 (rotate 90 degrees clockwise to view):
    upright, red is on the right."""
    stored = np.zeros((32, 32, 3), np.uint8)
    stored[:16], stored[16:] = RED, BLUE
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    upright = _decoded(path).astype(int)
    left, right = upright[2:-2, 2:6], upright[2:-2, -6:-2]  # away from JPEG's blurred edge
    assert (left[..., 2] > 200).all() and (left[..., 0] < 60).all()
    assert (right[..., 0] > 200).all() and (right[..., 2] < 60).all()


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    np.testing.assert_array_equal(_decoded(path, channels=1), 128)
    np.testing.assert_array_equal(_decoded(path, channels=3), 128)


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_transparency_is_composited_on_the_background(tmp_path, suffix):
    indices = np.zeros((16, 16), np.uint8)
    indices[:, 8:] = 1
    image = Image.fromarray(indices, "P")
    image.putpalette([*RED, *BLUE] + [0] * 762)
    path = tmp_path / f"palette{suffix}"
    image.save(path, transparency=1)  # blue is the transparent index
    np.testing.assert_array_equal(_decoded(path), _halves(RED, WHITE))


def test_alpha_is_composited_on_the_background(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)  # left: fully transparent
    rgba[:, 8:] = (*GREEN, 255)  # right: opaque green
    rgba[0, 0] = (0, 0, 0, 128)  # half-transparent black over white: 127
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    want = _halves(WHITE, GREEN)
    want[0, 0] = 127
    np.testing.assert_array_equal(_decoded(path), want)


def test_a_file_in_a_format_that_is_not_read_is_skipped_whatever_its_name(tmp_path):
    path = tmp_path / "really_pcx.png"
    Image.new("RGB", (16, 16), RED).save(path, format="PCX")
    assert Image.open(path).format == "PCX"  # PIL would parse it, given every plugin
    reason = decode.decode_file(path, 16, 3)
    assert isinstance(reason, str) and str(path) in reason and "not a readable" in reason


def test_tiff_and_the_first_frame_of_a_gif_are_read(tmp_path):
    Image.new("RGB", (16, 16), GREEN).save(tmp_path / "a.tiff")
    frames = [Image.new("RGB", (16, 16), color) for color in (RED, BLUE)]
    frames[0].save(tmp_path / "b.gif", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(_decoded(tmp_path / "a.tiff"), _halves(GREEN, GREEN))
    np.testing.assert_array_equal(_decoded(tmp_path / "b.gif"), _halves(RED, RED))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_images_are_skipped_unless_a_smaller_jpeg_decode_fits(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)
    for name in ("huge.png", "huge.jpg", "bomb.png"):
        side = 1024 if name == "bomb.png" else 512  # 512 x 512: between the limit and twice it
        Image.new("RGB", (side, side), RED).save(tmp_path / name)
    for name, why in (("huge.png", "MAX_IMAGE_PIXELS"), ("bomb.png", "decompression bomb")):
        reason = decode.decode_file(tmp_path / name, 16, 3)
        assert isinstance(reason, str) and name in reason and why in reason, reason
    jpeg = _decoded(tmp_path / "huge.jpg").astype(int)  # drafted to 64 x 64: within the limit
    assert (jpeg[..., 0] > 240).all() and (jpeg[..., 1:] < 15).all()
