"""`--mode=project`: photos into the generator's latent space (GAN inversion).

    python main.py --mode=project --config configs/demo.py --config.project.images=/photos

For each image, Adam runs from `project.restarts` random latents, each minimising

    pixel_weight * MSE(G(z), image) + perceptual_weight * D_incep(G(z), image)

where D_incep compares the FID Inception network's intermediate features (`project.layers`,
each feature vector scaled to unit length, squared distances averaged over positions and
layers: a perceptual distance without learned weights); the restart of the lowest loss is kept.
Images are read like an image folder (any size: centre-cropped and resized to the network's
resolution). A batch of images (`project.batch_size`, all restarts) is one compiled program,
split over the devices; each image's latents start from its own random stream, so its result
does not depend on the batch it lands in.

Under <workdir>/projected/<images shown>/ (or `project.output`):
    projection.json       the settings; resuming with other ones is an error naming them
    projections.jsonl     a line per image, appended as each batch finishes: name, pixel MSE,
                          perceptual distance, PSNR (dB, of G's output on [0, 1]), the latent
    latents.npy           the latents [N, latent_size] in the folder's order (latents.json: the
                          names; labels.npy: a conditional G's classes)
    reconstructions.png   the first 32 originals, each beside its reconstruction
A killed projection resumes with the batch it was in; `--mode=generate
--config.generate.latents=<output>/latents.npy` draws the latents again, and walks through them.
Every process runs the same batches (process 0's record of what is done, SIGTERM on any
process stops all before the next batch); process 0 alone writes.
"""

import dataclasses
import functools
import hashlib
import json
import logging
import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.sharding import Mesh
from PIL import Image

from progan_jax.data import decode
from progan_jax.metrics import fid, inception
from progan_jax.nets import sampling
from progan_jax.nets.gan import GAN, Params
from progan_jax.runtime import collectives, interrupt, parallel, paths
from progan_jax.runtime.errors import ConfigError, MissingFileError, UserError
from progan_jax.training import checkpointing, trained

RECORDS = "projections.jsonl"
SETTINGS = "projection.json"  # what a resumed projection must keep
SHOWN = 32  # pairs in reconstructions.png
_GRAY_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")


class ProjectionInputError(UserError, ValueError):
    """An image to project cannot be read as the network's input; the message names it."""


# ------------------------------------------------------------------------------- objective


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a projection minimises (see the module docstring)."""

    pixel_weight: float = 1.0
    perceptual_weight: float = 0.0
    layers: tuple[str, ...] = ()
    resolution: int = 299  # Inception's input side

    @classmethod
    def from_config(cls, project: ml_collections.ConfigDict) -> "Objective":
        return cls(
            pixel_weight=project.pixel_weight,
            perceptual_weight=project.perceptual_weight,
            layers=tuple(project.layers),
            resolution=project.perceptual_resolution,
        )


def inception_input(images: jax.Array, resolution: int) -> jax.Array:
    """Images in [-1, 1] as the FID network's input at `resolution`, differentiably."""
    return inception.pixels_to_input((images.astype(jnp.float32) + 1.0) * 127.5, resolution)


def perceptual_features(params: Params, images: jax.Array, objective: Objective) -> list:
    """The Inception features of `objective.layers`, each vector scaled to unit length."""
    _, state = inception.InceptionV3().apply(
        {"params": params},
        inception_input(images, objective.resolution),
        capture_intermediates=lambda module, _: module.name in objective.layers,
        mutable=["intermediates"],
    )
    captured = state["intermediates"]
    features = []
    for layer in objective.layers:
        f = captured[layer]["__call__"][0]
        features.append(f * jax.lax.rsqrt(jnp.sum(f * f, axis=-1, keepdims=True) + 1e-10))
    return features


def perceptual_distance(a: list, b: list) -> jax.Array:
    """[N] mean over layers of the squared feature distance averaged over positions."""
    return sum(
        jnp.mean(jnp.sum((x - y) ** 2, -1), (1, 2)) for x, y in zip(a, b, strict=True)
    ) / len(a)


# ------------------------------------------------------------------------------ the search


@dataclasses.dataclass(frozen=True)
class Search:
    """How the latents are searched: Adam steps and restarts."""

    steps: int = 300
    restarts: int = 4
    learning_rate: float = 0.05


@functools.lru_cache(maxsize=8)
def projector(gan: GAN, stage: int, mesh: Mesh, objective: Objective, search: Search):
    """Jitted over `mesh`: `((G params, Inception params, alpha), (targets, z0, labels)) ->
    (latents, pixel MSE, perceptual)`, each device projecting its own rows: targets [B, r, r, C]
    in [-1, 1], z0 [B, restarts, latent], labels [B] (class ids; ignored when unconditional)."""

    def losses(shared, z, targets, target_features, labels):
        g_params, i_params, alpha = shared
        images = gan.generate(g_params, z, stage, alpha, labels)
        pixel = jnp.mean((images - targets) ** 2, axis=(1, 2, 3))
        if objective.perceptual_weight == 0:
            return objective.pixel_weight * pixel, (pixel, jnp.zeros_like(pixel))
        features = perceptual_features(i_params, images, objective)
        perceptual = perceptual_distance(features, target_features)
        total = objective.pixel_weight * pixel + objective.perceptual_weight * perceptual
        return total, (pixel, perceptual)

    def project(shared, rows):
        targets, z0, labels = rows
        count, restarts, latent = z0.shape
        targets = jnp.repeat(targets, restarts, axis=0)  # row i * restarts + k
        labels = jnp.repeat(labels, restarts) if gan.label_size else None
        target_features = (
            perceptual_features(shared[1], targets, objective)
            if objective.perceptual_weight
            else None
        )
        optimizer = optax.adam(search.learning_rate)

        def total(z):  # each row's loss depends on its own latent only
            value, _ = losses(shared, z, targets, target_features, labels)
            return jnp.sum(value)

        def step(carry, _):
            z, state = carry
            updates, state = optimizer.update(jax.grad(total)(z), state)
            return (optax.apply_updates(z, updates), state), None

        z = z0.reshape(count * restarts, latent)
        (z, _), _ = jax.lax.scan(step, (z, optimizer.init(z)), None, length=search.steps)
        value, (pixel, perceptual) = losses(shared, z, targets, target_features, labels)
        value = jnp.where(jnp.isnan(value), jnp.inf, value)  # a diverged restart never wins
        best = jnp.argmin(value.reshape(count, restarts), axis=1)

        def pick(a: jax.Array) -> jax.Array:  # each image's best restart
            rows = a.reshape(count, restarts, *a.shape[1:])
            return jnp.take_along_axis(rows, best.reshape(count, 1, *([1] * (a.ndim - 1))), 1)[:, 0]

        return pick(z), pick(pixel), pick(perceptual)

    return parallel.rowwise(project, mesh, differentiates=True)


def initial_latents(seed: int, name: str, restarts: int, latent_size: int) -> np.ndarray:
    """The image `name`'s starting latents [restarts, latent]: a stream of its own, whatever
    batch it is projected in and whatever other files the folder holds."""
    stream = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return (
        np.random.default_rng([seed, stream])
        .standard_normal((restarts, latent_size))
        .astype(np.float32)
    )


def psnr(pixel_mse: float) -> float:
    """dB on [0, 1] images of the MSE on [-1, 1] ones."""
    return 10.0 * math.log10(4.0 / max(pixel_mse, 1e-12))


# ---------------------------------------------------------------------------------- inputs


def image_paths(folder: str) -> list[pathlib.Path]:
    """The folder's images (searched recursively, sorted; hidden files and folders left out);
    errors for none and for files that are not images."""
    root = pathlib.Path(folder).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"config.project.images: {root} is not a folder of images")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    others = [p for p in files if p.suffix.lower() not in decode.IMAGE_SUFFIXES]
    if others:
        raise ProjectionInputError(
            f"config.project.images: {others[0]} is not an image "
            f"({', '.join(decode.IMAGE_SUFFIXES)}); move it out of {root}"
        )
    if not files:
        raise ProjectionInputError(f"config.project.images: {root} holds no images")
    return files


def _is_gray(image: Image.Image) -> bool:
    if image.mode in _GRAY_MODES:
        return True
    if image.mode in ("P", "PA"):  # a palette: gray if every colour used is
        rgb = np.asarray(image.convert("RGB"))
        return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    return False


def check_images(files: list[pathlib.Path], channels: int) -> None:
    """Refuses, before any search, a file that is not a readable image, or a grayscale one
    for an RGB network."""
    for path in files:
        try:
            with Image.open(path, formats=decode.FORMATS) as image:
                gray = channels == 3 and _is_gray(image)
        except (OSError, ValueError) as error:
            raise ProjectionInputError(f"{path}: not a readable image ({error})") from error
        if gray:
            raise ProjectionInputError(
                f"{path} is grayscale and the network draws RGB images: convert it to RGB "
                "(its colours would have to be made up), or leave it out"
            )


def read_image(path: pathlib.Path, resolution: int, channels: int) -> np.ndarray:
    """The image as the network's input: uint8 [r, r, channels], decoded as training data."""
    image = decode.decode_file(path, resolution, channels)
    if isinstance(image, str):
        raise ProjectionInputError(image)
    return image


def image_labels(
    project: ml_collections.ConfigDict,
    files: list,
    root: pathlib.Path,
    classes: int,
    workdir: str,
    which: int | str | None = None,
) -> np.ndarray:
    """Class ids [N] of a conditional network's images: `project.labels` as one id for all or
    one per image, or with `project.labels_from_subfolders` the class of each first-level
    subfolder, by the class names of the run's checkpoint `which` (else those names sorted, as
    training numbers them); zeros for an unconditional network."""
    asked = tuple(project.labels) if isinstance(project.labels, tuple | list) else (project.labels,)
    if not classes:
        if asked or project.labels_from_subfolders:
            raise ConfigError("config.project.labels: the generator is unconditional")
        return np.zeros(len(files), np.int32)
    if project.labels_from_subfolders:
        parts = [p.relative_to(root).parts for p in files]
        loose = [p for p, part in zip(files, parts, strict=True) if len(part) == 1]
        if loose:
            raise ConfigError(
                f"config.project.labels_from_subfolders: {loose[0]} is not in a class subfolder"
            )
        networks = checkpointing.trained_networks(workdir, which)
        names = networks and networks.class_names
        names = list(names or sorted({part[0] for part in parts}))
        unknown = sorted({part[0] for part in parts} - set(names))
        if unknown or len(names) != classes:
            raise ConfigError(
                f"config.project.labels_from_subfolders: subfolders {unknown or names} are not "
                f"the generator's {classes} classes"
            )
        return np.asarray([names.index(part[0]) for part in parts], np.int32)
    ids = np.asarray(asked, np.int64)
    if len(ids) not in (1, len(files)):
        raise ConfigError(
            f"config.project.labels: a conditional generator needs one class id, or one per "
            f"image ({len(files)}), or project.labels_from_subfolders=True"
        )
    if ((ids < 0) | (ids >= classes)).any():
        raise ConfigError(f"config.project.labels: ids must be in 0..{classes - 1}")
    return np.broadcast_to(ids, (len(files),)).astype(np.int32)


# --------------------------------------------------------------------------------- the mode


def _records_text(records: epath.Path) -> str:
    """The complete lines a previous run wrote, as process 0 reads them (a line cut short by
    a kill dropped from the file), on every process."""
    text = ""
    if jax.process_index() == 0 and records.exists():
        text = records.read_text()
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
            records.write_text(text)
    return collectives.allgather_bytes(text.encode())[0].decode()


def _done(text: str) -> dict[str, dict]:
    done = {}
    for line in text.splitlines():
        record = json.loads(line)
        done[record["name"]] = record
    return done


def _check_settings(out: epath.Path, settings: dict) -> None:
    """Resuming needs the settings of the run it resumes: `projection.json` keeps them, and
    other ones are an error naming the fields (a stale line would be kept for its image)."""
    path = out / SETTINGS
    if path.exists():
        saved = json.loads(path.read_text())
        changed = sorted(
            k for k in saved.keys() | settings.keys() if saved.get(k) != settings.get(k)
        )
        if changed:
            raise ConfigError(
                f"config.project.output: {out} holds a projection with other settings "
                f"({', '.join(f'{k}: {saved.get(k)!r} -> {settings.get(k)!r}' for k in changed)}); "
                "project into another output, or remove it"
            )
    elif jax.process_index() == 0:
        path.write_text(json.dumps(settings, indent=1))


def _stop_if_asked() -> None:
    """SIGTERM on any process stops every process before the same batch."""
    if collectives.any_process(np.array([interrupt.requested()], np.int32))[0]:
        raise interrupt.Interrupted(
            "SIGTERM during projection: stopped between batches; the same command resumes it."
        )


def _objective_and_weights(config: ml_collections.ConfigDict):
    objective = Objective.from_config(config.project)
    if objective.perceptual_weight == 0:
        return objective, {}
    if not objective.layers:
        raise ConfigError("config.project.layers: name Inception layers for the perceptual term")
    if not config.evals.fid_weights:
        raise ConfigError(
            "config.evals.fid_weights: the perceptual term uses the FID Inception network; "
            f"{fid.HOW_TO_GET_WEIGHTS} Or set project.perceptual_weight=0 (pixels only)."
        )
    return objective, fid.load_weights(config.evals.fid_weights)


def project_images(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """--mode=project; returns a summary line (the means over all images)."""
    pr = config.project
    if not pr.images:
        raise ConfigError("config.project.images: name the folder of images to project")
    if pr.batch_size < 1 or pr.restarts < 1 or pr.steps < 0:
        raise ConfigError("config.project: batch_size and restarts must be >= 1, steps >= 0")
    generator = trained.load_generator(config, workdir, config.checkpoint_images_shown)
    gan, resolution = generator.gan, generator.resolution
    channels = config.model.num_channels
    files = image_paths(pr.images)
    check_images(files, channels)
    root = pathlib.Path(pr.images).expanduser()
    names = [str(p.relative_to(root)) for p in files]
    labels = image_labels(pr, files, root, gan.label_size, workdir, config.checkpoint_images_shown)
    objective, inception_params = _objective_and_weights(config)
    out = paths.resolve(pr.output or f"{workdir}/projected/{generator.images_shown}")
    out.mkdir(parents=True, exist_ok=True)
    search = Search(pr.steps, pr.restarts, pr.learning_rate)
    settings = dict(
        images=str(root.resolve()),
        images_shown=generator.images_shown,
        search=dataclasses.asdict(search),
        objective=dataclasses.asdict(objective) | {"layers": list(objective.layers)},
        seed=pr.seed,
        labels=labels.tolist() if gan.label_size else None,
    )
    _check_settings(out, settings)
    records = out / RECORDS
    done = _done(_records_text(records))
    todo = [i for i, name in enumerate(names) if name not in done]
    mesh = parallel.make_mesh()
    batch = parallel.round_up(pr.batch_size, mesh.size)
    run = projector(gan, generator.stage, mesh, objective, search)
    shared = jax.device_put(
        (generator.params, inception_params, jnp.float32(generator.alpha)),
        parallel.replicated(mesh),
    )
    if done:
        logging.info("Resuming: %d of %d images projected already.", len(done), len(names))
    for start in range(0, len(todo), batch):
        _stop_if_asked()
        chosen = todo[start : start + batch]
        padded = chosen + [chosen[-1]] * (batch - len(chosen))  # one compiled shape
        targets = np.stack([read_image(files[i], resolution, channels) for i in padded])
        z0 = np.stack([initial_latents(pr.seed, names[i], pr.restarts, gan.latent_size)
                       for i in padded])  # fmt: skip
        rows = [
            parallel.shard_rows(a, mesh).array
            for a in (targets.astype(np.float32) / 127.5 - 1.0, z0, labels[padded])
        ]
        z, pixel, perceptual = (
            parallel.Rows(a, len(chosen)).host() for a in run(shared, tuple(rows))
        )
        lines = [
            dict(
                name=names[i],
                pixel_mse=float(pixel[k]),
                perceptual=float(perceptual[k]),
                psnr=psnr(float(pixel[k])),
                latent=z[k].tolist(),
            )
            for k, i in enumerate(chosen)
        ]
        if jax.process_index() == 0:
            with records.open("a") as file:
                file.write("".join(json.dumps(line) + "\n" for line in lines))
        done.update({line["name"]: line for line in lines})
        logging.info("Projected %d of %d images.", len(done), len(names))
    return _write_outputs(out, names, done, files, labels, generator, config)


def _write_outputs(out, names, done, files, labels, generator, config) -> dict:
    """latents.npy, latents.json (names) and, conditional, labels.npy of all images, and
    reconstructions.png of the first `SHOWN`; the means."""
    latents = np.asarray([done[name]["latent"] for name in names], np.float32)
    gan, resolution = generator.gan, generator.resolution
    conditional = labels if gan.label_size else None
    shown = slice(0, SHOWN)
    drawn = sampling.host_images(
        gan, generator.params, latents[shown], generator.stage, generator.alpha, np.uint8,
        None if conditional is None else conditional[shown],
    )  # fmt: skip
    originals = np.stack([read_image(p, resolution, config.model.num_channels)
                          for p in files[shown]])  # fmt: skip
    pairs = np.stack([originals, drawn], axis=1).reshape(-1, *drawn.shape[1:])
    if jax.process_index() == 0:
        with (out / "latents.npy").open("wb") as file:
            np.save(file, latents)
        if conditional is not None:
            with (out / "labels.npy").open("wb") as file:
                np.save(file, conditional)
        (out / "latents.json").write_text(json.dumps(names, indent=1))
        grid = sampling.image_grid(pairs, 2 * min(4, len(drawn)), config.model.resolution)
        sampling.save_png(out / "reconstructions.png", grid)
    return {
        "images": len(names),
        "output": str(out),
        "pixel_mse": float(np.mean([done[n]["pixel_mse"] for n in names])),
        "perceptual": float(np.mean([done[n]["perceptual"] for n in names])),
        "psnr": float(np.mean([done[n]["psnr"] for n in names])),
    }
