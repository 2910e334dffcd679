"""Images from a checkpoint's EMA generator: a grid, single PNGs and a latent walk.

    python main.py --config configs/demo.py --mode=generate
    python main.py --config configs/demo.py --mode=generate \
        --config.checkpoint_images_shown=30016 --config.generate.seed=7 \
        --config.generate.truncation=1.5

Writes under <workdir>/generated/<images shown>/: grid.png, images/<seed>_<i>.png and
interpolation.gif (a grid of walks through latent space along great circles, as the latents
are normalized to a sphere in G anyway). `--config.generate.latents=z.npy` draws the latents
of a file instead: the grid and PNGs in its order, one walk through them in turn.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from progan_jax.nets import sampling
from progan_jax.runtime import paths
from progan_jax.runtime.errors import ConfigError
from progan_jax.training import trained


def latents(gan, seed: int, count: int, truncation: float | None) -> jax.Array:
    """Standard normal latents, or truncated to [-truncation, truncation] per component."""
    key = jax.random.key(seed)
    if truncation is None:
        return gan.sample_latents(key, count)
    shape = (count, gan.latent_size)
    return jax.random.truncated_normal(key, -truncation, truncation, shape, jnp.float32)


def latents_file(path: str, latent_size: int) -> np.ndarray:
    """The latents [N, latent_size] saved at `path` (.npy), as float32."""
    try:
        with paths.resolve(path).open("rb") as file:
            loaded = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"config.generate.latents: cannot read {path} as .npy: {error}"
        ) from error
    if not isinstance(loaded, np.ndarray):  # an .npz
        raise ConfigError(f"config.generate.latents: {path} is not an .npy of one array")
    if loaded.ndim != 2 or loaded.shape[1] != latent_size or not len(loaded):
        raise ConfigError(
            f"config.generate.latents: {path} holds an array of shape {loaded.shape}; the "
            f"generator takes latents [N, {latent_size}]"
        )
    if not np.issubdtype(loaded.dtype, np.floating) or not np.isfinite(loaded).all():
        raise ConfigError(f"config.generate.latents: {path} must hold finite floats")
    return loaded.astype(np.float32)


def projected_labels(path: str, gan, count: int) -> np.ndarray | None:
    """A conditional G's classes of a latents file: the `labels.npy` beside it (what
    `--mode=project` writes), or None."""
    beside = paths.resolve(path).parent / "labels.npy"
    if not gan.label_size or not beside.exists():
        return None
    with beside.open("rb") as file:
        labels = np.load(file, allow_pickle=False)
    if labels.shape != (count,) or not ((labels >= 0) & (labels < gan.label_size)).all():
        raise ConfigError(f"{beside}: expected {count} class ids in 0..{gan.label_size - 1}")
    return labels.astype(np.int32)


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation between latent rows a and b at fractions t."""
    na, nb = (
        a / np.linalg.norm(a, axis=-1, keepdims=True),
        b / np.linalg.norm(b, axis=-1, keepdims=True),
    )
    omega = np.arccos(np.clip(np.sum(na * nb, -1, keepdims=True), -1.0, 1.0))
    so = np.sin(omega)
    t = t[:, None, None]
    safe = np.where(so < 1e-6, 1.0, so)
    blend = np.sin((1.0 - t) * omega) / safe * a + np.sin(t * omega) / safe * b
    linear = (1.0 - t) * a + t * b
    return np.where(so < 1e-6, linear, blend)


def class_ids(gan, asked: tuple[int, ...], count: int, columns: int) -> np.ndarray | None:
    """The classes of `count` images laid out `columns` to a row: those `asked` for, one per
    row in turn, or without any asked one class per row in class order; None when G is
    unconditional."""
    if not gan.label_size:
        if asked:
            raise ConfigError(
                "config.generate.labels: the checkpoint's generator is unconditional "
                "(model.label_size=0); leave the labels out"
            )
        return None
    for label in asked:
        if not 0 <= label < gan.label_size:
            raise ConfigError(
                f"config.generate.labels: class {label} is not one of 0..{gan.label_size - 1}"
            )
    if not asked:
        return sampling.grid_labels(gan, count, columns)
    return np.asarray(asked, np.int32)[np.arange(count) // columns % len(asked)]


def walk_keys(gan, config, given: np.ndarray | None) -> tuple[np.ndarray, int]:
    """The walks' keyframes [keyframes, walks, latent] and the grid of walks: `keyframes`
    random latents for each of `interpolation_grid`**2 walks, or one walk through the first
    `keyframes` of `given`."""
    gen = config.generate
    if given is not None:
        return given[: gen.keyframes, None], 1
    walks = gen.interpolation_grid**2
    keys = np.asarray(latents(gan, gen.seed + 1, walks * gen.keyframes, gen.truncation))
    return keys.reshape(gen.keyframes, walks, -1), gen.interpolation_grid


def interpolation_frames(
    gan, generator, config, given: np.ndarray | None = None, given_labels=None
) -> list[np.ndarray]:
    """Frames of a grid of walks through keyframes (`walk_keys`), looping back to the start;
    a conditional G's walk stays within its class (`class_ids` of the walks' grid), or takes
    each keyframe's own class from it to the next (`given_labels`). All frames are generated
    together, in minibatches over all devices."""
    gen = config.generate
    keys, columns = walk_keys(gan, config, given)
    count, walks = keys.shape[:2]
    t = np.linspace(0.0, 1.0, gen.frames_per_keyframe, endpoint=False)
    segments = [slerp(keys[k], keys[(k + 1) % count], t) for k in range(count)]
    z = np.concatenate(segments).reshape(-1, keys.shape[-1])  # [frames * walks, latent]
    walk_classes = class_ids(gan, tuple(gen.labels), walks, columns)
    labels = None if walk_classes is None else np.tile(walk_classes, len(z) // walks)
    if given_labels is not None and not gen.labels:
        labels = np.repeat(given_labels[:count], gen.frames_per_keyframe)
    images = sampling.host_images(
        gan, generator.params, z, generator.stage, generator.alpha, np.uint8, labels
    )
    frames = images.reshape(-1, walks, *images.shape[1:])
    return [sampling.image_grid(frame, columns, config.model.resolution) for frame in frames]


def write_generated(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """--mode=generate. Every process generates (the generator runs over all devices); only
    process 0 writes the files, so processes never write the same paths."""
    gen = config.generate
    generator = trained.load_generator(config, workdir, config.checkpoint_images_shown)
    gan = generator.gan
    out = paths.resolve(gen.output or f"{workdir}/generated/{generator.images_shown}")
    given = latents_file(gen.latents, gan.latent_size) if gen.latents else None
    z = given if given is not None else latents(gan, gen.seed, gen.num_images, gen.truncation)
    given_labels = projected_labels(gen.latents, gan, len(z)) if gen.latents else None
    labels = class_ids(gan, tuple(gen.labels), len(z), gen.grid)
    if given_labels is not None and not gen.labels:
        labels = given_labels
    images = sampling.host_images(
        gan, generator.params, z, generator.stage, generator.alpha, np.uint8, labels
    )
    walk = gen.keyframes > 1 and (given is None or len(given) > 1)
    frames = interpolation_frames(gan, generator, config, given, given_labels) if walk else []
    written = _write_files(out, images, frames, config) if jax.process_index() == 0 else {}
    classes = {} if labels is None else {"labels": labels.tolist()}
    return {
        "images_shown": generator.images_shown,
        "stage": generator.stage,
        "alpha": generator.alpha,
        **classes,
        **written,
    }


def _write_files(
    out: epath.Path, images: np.ndarray, frames: list, config: ml_collections.ConfigDict
) -> dict:
    """grid.png, the single PNGs and (with frames) interpolation.gif under `out`."""
    gen, columns = config.generate, config.generate.grid
    grid_path = sampling.save_png(
        out / "grid.png",
        sampling.image_grid(images[: columns * columns], columns, config.model.resolution),
    )
    singles = [
        sampling.save_png(out / "images" / f"{gen.seed}_{i:05d}.png", image)
        for i, image in enumerate(images)
    ]
    written = {"grid": str(grid_path), "images": len(singles)}
    if frames:
        pil = [sampling.to_pil(f) for f in frames]
        gif = sampling.write_image_file(
            out / "interpolation.gif",
            lambda f: pil[0].save(
                f, "GIF", save_all=True, append_images=pil[1:], duration=1000 // gen.fps, loop=0
            ),
        )
        written["interpolation"] = str(gif)
        written["frames"] = len(frames)
    return written
