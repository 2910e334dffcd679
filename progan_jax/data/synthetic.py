"""A built-in data set of procedurally drawn faces: offline, deterministic, any resolution.

Each image is a cartoon face (head, hair, eyes, pupils, mouth) on a two-colour gradient, with
random skin and hair colour, position, size, tilt and expression. The layout is simple enough
for a small GAN to learn in minutes and varied enough that mode collapse or blur is visible,
and that the sliced Wasserstein distance falls measurably as training proceeds.

Image `i` depends only on `(seed, i)`, so the set is identical on every machine and process.
Each face has a class, its skin tone (`SKIN_TONES`), for conditional training.
"""

import numpy as np

_SKIN = np.array(
    [[255, 224, 189], [234, 192, 134], [198, 134, 66], [141, 85, 36], [255, 205, 148]],
    dtype=np.float32,
)
# The class of each row of _SKIN: light (rows 0 and 4), medium, dark (rows 2 and 3).
SKIN_TONES = ("light", "medium", "dark")
_SKIN_TONE_OF_ROW = (0, 1, 2, 2, 0)
_SUPERSAMPLE = 2  # drawn at 2x and box-filtered down: anti-aliased edges


def _ellipse(x, y, cx, cy, rx, ry, angle):
    """Mask of a rotated ellipse on the coordinate grids x, y (in [0, 1])."""
    c, s = np.cos(angle), np.sin(angle)
    u = ((x - cx) * c + (y - cy) * s) / rx
    v = (-(x - cx) * s + (y - cy) * c) / ry
    return (u * u + v * v) <= 1.0


def _layout(rng: np.random.Generator) -> tuple:
    """The background and head of a face, drawn from `rng` in the set's fixed order: its
    colours, centre, radii, tilt and the row of its skin colour."""
    top, bottom = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    cx, cy = rng.uniform(0.38, 0.62, 2)
    rx = rng.uniform(0.2, 0.3)
    ry = rx * rng.uniform(1.1, 1.35)
    tilt = rng.uniform(-0.35, 0.35)
    skin_row = rng.integers(len(_SKIN))
    return top, bottom, cx, cy, rx, ry, tilt, skin_row


def skin_tone(index: int, seed: int = 0) -> int:
    """The class of image `index` (an index into `SKIN_TONES`), without drawing it."""
    return _SKIN_TONE_OF_ROW[_layout(np.random.default_rng([seed, index]))[-1]]


def draw_face(index: int, resolution: int, seed: int = 0) -> np.ndarray:
    """Image `index` of the set as uint8 [resolution, resolution, 3]."""
    rng = np.random.default_rng([seed, index])
    size = resolution * _SUPERSAMPLE
    y, x = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size

    top, bottom, cx, cy, rx, ry, tilt, skin_row = _layout(rng)
    image = top + (bottom - top) * y[..., None]
    c, s = np.cos(tilt), np.sin(tilt)

    def place(dx, dy):  # a point in the face's own (tilted) frame
        return cx + dx * c - dy * s, cy + dx * s + dy * c

    skin = _SKIN[skin_row] * rng.uniform(0.85, 1.05)
    hair = rng.uniform(0, 120, 3).astype(np.float32) * rng.uniform(0.3, 1.6)
    hx, hy = place(0, -0.25 * ry)
    image[_ellipse(x, y, hx, hy, rx * 1.08, ry * 0.85, tilt)] = hair
    image[_ellipse(x, y, cx, cy, rx, ry, tilt)] = skin

    eye_dx, eye_dy = rx * rng.uniform(0.32, 0.45), -ry * rng.uniform(0.12, 0.3)
    eye_r = rx * rng.uniform(0.14, 0.22)
    iris = rng.uniform(0, 160, 3).astype(np.float32)
    gaze = rng.uniform(-0.4, 0.4, 2) * eye_r
    for side in (-1, 1):
        ex, ey = place(side * eye_dx, eye_dy)
        image[_ellipse(x, y, ex, ey, eye_r, eye_r * 0.7, tilt)] = 250.0
        image[_ellipse(x, y, ex + gaze[0], ey + gaze[1], eye_r * 0.5, eye_r * 0.5, 0.0)] = iris

    mx, my = place(0, ry * rng.uniform(0.35, 0.55))
    mouth_w, mouth_h = rx * rng.uniform(0.25, 0.55), ry * rng.uniform(0.05, 0.2)
    lips = np.array([150, 40, 50], np.float32) * rng.uniform(0.6, 1.2)
    image[_ellipse(x, y, mx, my, mouth_w, mouth_h, tilt)] = lips

    image = image.reshape(resolution, _SUPERSAMPLE, resolution, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def draw_faces(count: int, resolution: int, seed: int = 0) -> np.ndarray:
    """Images 0 .. count-1 as uint8 [count, resolution, resolution, 3]."""
    return np.stack([draw_face(i, resolution, seed) for i in range(count)])
