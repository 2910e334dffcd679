"""A checkpoint's EMA generator as a TensorFlow SavedModel that runs without JAX or this project.

    python main.py --config configs/demo.py --mode=export
    python main.py --config configs/demo.py --mode=export \
        --config.checkpoint_images_shown=30016

The generator is lowered with `jax2tf` (StableHLO inside an XlaCallModule op, for each platform
in `config.export.platforms`) at the checkpoint's own stage and alpha, with its weights as
variables. Both signatures take `latents`, float32 [batch, latent_size] with any batch size,
and for a conditional generator `labels`, int32 class ids [batch] (the run's classes.json
names them):

* `images_uint8`: uint8 [batch, r, r, channels], as the PNGs of --mode=generate;
* `images_float`: float32 [batch, r, r, channels] in [-1, 1] (the raw output, unclipped).

Writes <workdir>/export/<images shown>/ (or config.export.output, local or a bucket) and, in it,
export.json describing the model.
"""

import json
import os
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from etils import epath
from jax.experimental import jax2tf

from progan_jax.nets import sampling
from progan_jax.runtime import paths
from progan_jax.training import trained

SIGNATURES = ("images_uint8", "images_float")
METADATA_FILE = "export.json"


def _lowered(generator: sampling.GeneratorSnapshot, platforms: tuple[str, ...]):
    """TF-callable `(params, latents[, labels]) -> (uint8 images, float images)`, at the
    snapshot's stage and alpha, for any batch size."""
    gan, stage, alpha = generator.gan, generator.stage, generator.alpha

    def images(params, z, *labels):
        float_images = gan.generate(params, z, stage, jnp.float32(alpha), *labels)
        return sampling.to_uint8(float_images, jnp), float_images

    inputs = [None, f"(batch, {gan.latent_size})"] + (["(batch,)"] if gan.label_size else [])
    return jax2tf.convert(
        images,
        polymorphic_shapes=inputs,
        with_gradient=False,  # a sampler: only the forward pass is exported
        native_serialization_platforms=platforms,
    )


class _Generator(tf.Module):
    """The SavedModel's root: the generator's weights as variables and one function per
    signature (both call the same lowered JAX function, which yields both image forms)."""

    def __init__(self, generator: sampling.GeneratorSnapshot, platforms: tuple[str, ...]):
        super().__init__()
        # A flat list: tf.Module wraps the dicts it tracks in types that JAX treats as leaves.
        leaves, self._treedef = jax.tree.flatten(generator.params)
        self.weights = [tf.Variable(np.asarray(leaf)) for leaf in leaves]
        self._images = _lowered(generator, platforms)
        specs = [tf.TensorSpec([None, generator.gan.latent_size], tf.float32, name="latents")]
        if generator.gan.label_size:
            specs.append(tf.TensorSpec([None], tf.int32, name="labels"))
        self.images_uint8 = tf.function(self._uint8, input_signature=specs, autograph=False)
        self.images_float = tf.function(self._float, input_signature=specs, autograph=False)

    def _params(self) -> dict:
        return jax.tree.unflatten(self._treedef, list(self.weights))

    def _uint8(self, *inputs: tf.Tensor) -> dict:
        return {"images": self._images(self._params(), *inputs)[0]}

    def _float(self, *inputs: tf.Tensor) -> dict:
        return {"images": self._images(self._params(), *inputs)[1]}


def metadata(generator: sampling.GeneratorSnapshot, platforms: tuple[str, ...]) -> dict:
    """What a user of the SavedModel needs to know without loading it."""
    return {
        "latent_size": generator.gan.latent_size,
        "resolution": generator.resolution,
        "stage": generator.stage,
        "alpha": float(generator.alpha),
        "images_shown": generator.images_shown,
        "signatures": list(SIGNATURES),
        "input": "latents",
        # A conditional generator's second input: int32 class ids in [0, classes).
        **({"labels": {"classes": generator.gan.label_size}} if generator.gan.label_size else {}),
        "output": "images",
        "platforms": list(platforms),
    }


def _copy_tree(source: str, target: epath.Path) -> None:
    """Copies a local directory into `target` (a bucket path), file by file."""
    for folder, _, files in os.walk(source):
        relative = os.path.relpath(folder, source)
        destination = target if relative == "." else target / relative
        destination.mkdir(parents=True, exist_ok=True)
        for name in files:
            (destination / name).write_bytes(epath.Path(folder, name).read_bytes())


def save(
    generator: sampling.GeneratorSnapshot, output: epath.Path, platforms: tuple[str, ...]
) -> dict:
    """Writes the SavedModel and export.json to `output`; returns the metadata. TensorFlow
    writes a local directory; a bucket gets a copy of it."""
    module = _Generator(generator, platforms)
    signatures = {name: getattr(module, name) for name in SIGNATURES}
    info = metadata(generator, platforms)
    with tempfile.TemporaryDirectory() as scratch:
        local = str(output) if not paths.is_remote(output) else os.path.join(scratch, "model")
        tf.saved_model.save(module, local, signatures=signatures)
        epath.Path(local, METADATA_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if paths.is_remote(output):
            _copy_tree(local, output)
    return info


def export_generator(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """--mode=export: the checkpoint's G_ema as a SavedModel; returns where and what."""
    ex = config.export
    generator = trained.load_generator(config, workdir, config.checkpoint_images_shown)
    output = paths.resolve(ex.output or f"{workdir}/export/{generator.images_shown}")
    platforms = tuple(ex.platforms)
    # Every process restores (a collective read); one writes, so that several processes never
    # write the same files of a shared workdir.
    if jax.process_index() == 0:
        info = save(generator, output, platforms)
    else:
        info = metadata(generator, platforms)
    return {"saved_model": str(output), **info}
