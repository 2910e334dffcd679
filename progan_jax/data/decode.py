"""Image files decoded as a photo library shows them, then fitted to a square resolution.

A folder of photos is untrusted, varied input, so decoding follows explicit rules:

* Only the formats in `FORMATS` are parsed (`Image.open(..., formats=...)`), whatever the
  extension says: a file named `.png` that is really a PCX or EPS is a skipped file, not work
  for a rarely used PIL plugin.
* The EXIF orientation is applied (`ImageOps.exif_transpose`): phone photos come out upright.
* 16-bit grayscale (PIL modes `I;16*`, and `I` read as 16-bit) is scaled to 8 bits (x / 257),
  not clipped to white.
* Transparency (alpha channels, a palette's or a colour key's `transparency`) is composited on
  `BACKGROUND` (white), as viewers show a transparent PNG on a page.
* Animated GIFs and multi-page TIFFs give their first frame.
* Memory stays bounded: JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still
  covers the target (`Image.draft`), and an image of more than `Image.MAX_IMAGE_PIXELS` pixels
  to decode is a skipped file with its reason (PIL refuses those over twice that as
  decompression bombs at open; this bound also covers the range where it only warns).

A file that breaks a rule is reported as a string (its path and why) instead of an image; the
caller counts these as skipped files.
"""

import pathlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# PIL format names parsed, and the extensions that mark a file as an image to read.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
BACKGROUND = (255, 255, 255)  # RGB under transparent pixels
# Part of an image folder's cache key: raise it when these rules change what a file decodes to,
# so that its caches, and the FID statistics kept under the same key, are made again.
RULES_VERSION = 2
_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_file(path: pathlib.Path, resolution: int, channels: int) -> np.ndarray | str:
    """The file's image at `resolution` x `resolution` x `channels`, or why it is skipped."""
    try:
        with Image.open(path, formats=FORMATS) as image:
            image.draft(None, (resolution, resolution))  # JPEG only: a smaller decode
            _check_pixels(image)
            return fit(ImageOps.exif_transpose(image), resolution, channels)
    except UnidentifiedImageError:
        return f"{path}: not a readable {', '.join(FORMATS)} image"
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return f"{path}: {error}"


def _check_pixels(image: Image.Image) -> None:
    """Refuses, before decoding, an image whose pixels would not fit the memory bound."""
    pixels = image.width * image.height
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(
            f"{image.width}x{image.height} = {pixels} pixels to decode, more than "
            f"Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}"
        )


def fit(image: Image.Image, resolution: int, channels: int) -> np.ndarray:
    """The image as displayed (8 bits, no transparency), centre-cropped and resized."""
    return _square_resize(_on_background(_to_8_bits(image)), resolution, channels)


def _to_8_bits(image: Image.Image) -> Image.Image:
    """16-bit grayscale scaled to 8 bits: PIL's own conversion clips it (all white)."""
    if image.mode not in _WIDE_GRAY_MODES:
        return image
    wide = np.clip(np.asarray(image, dtype=np.float32), 0, 65535)
    return Image.fromarray(np.rint(wide / 257).astype(np.uint8))


def _on_background(image: Image.Image) -> Image.Image:
    """Transparent pixels composited on `BACKGROUND`; opaque images unchanged."""
    if not image.has_transparency_data:
        return image
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _square_resize(image: Image.Image, resolution: int, channels: int) -> np.ndarray:
    """Centre-crops to a square and resizes (antialiased down, bicubic up); RGB or grayscale."""
    image = image.convert("L" if channels == 1 else "RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        method = Image.Resampling.LANCZOS if side > resolution else Image.Resampling.BICUBIC
        image = image.resize((resolution, resolution), method)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array
