"""--mode=generate (progan_jax.modes.generate): the classes a conditional generator is asked for."""

import dataclasses

import numpy as np
import pytest

from progan_jax.modes import generate
from progan_jax.nets import sampling
from progan_jax.runtime import errors


@dataclasses.dataclass(frozen=True)
class _GAN:  # what class_ids reads of a GAN
    label_size: int


def test_classes_asked_for_repeat_one_per_row():
    ids = generate.class_ids(_GAN(5), (3,), 6, 3)
    np.testing.assert_array_equal(ids, [3] * 6)
    ids = generate.class_ids(_GAN(5), (1, 4), 9, 3)
    np.testing.assert_array_equal(ids, [1, 1, 1, 4, 4, 4, 1, 1, 1])


def test_without_classes_asked_each_row_is_the_next_class():
    ids = generate.class_ids(_GAN(3), (), 8, 2)
    np.testing.assert_array_equal(ids, [0, 0, 1, 1, 2, 2, 0, 0])
    np.testing.assert_array_equal(ids, sampling.grid_labels(_GAN(3), 8, 2))


def test_classes_are_checked_against_the_generator():
    assert generate.class_ids(_GAN(0), (), 4, 2) is None
    unconditional = r"generate\.labels: the checkpoint's generator is unconditional"
    with pytest.raises(errors.ConfigError, match=unconditional):
        generate.class_ids(_GAN(0), (1,), 4, 2)
    with pytest.raises(errors.ConfigError, match=r"class 5 is not one of 0\.\.4"):
        generate.class_ids(_GAN(5), (5,), 4, 2)


@pytest.mark.slow
def test_a_conditional_generator_draws_the_classes_asked_for(tmp_path, tiny_config):
    """The images of generate.labels=(2,) are G's images of class 2 for the same latents."""
    tiny_config.model.label_size = 3
    tiny_config.data.labels = "skin_tone"
    gen = tiny_config.generate
    tiny_config.checkpoint_images_shown = "untrained"
    gen.num_images, gen.grid, gen.keyframes = 4, 2, 1
    gen.labels = (2,)
    gen.output = str(tmp_path / "out")
    result = generate.write_generated(tiny_config, str(tmp_path))
    assert result["labels"] == [2, 2, 2, 2]
    from progan_jax.training import trained

    generator = trained.load_generator(tiny_config, str(tmp_path), "untrained")
    z = generate.latents(generator.gan, gen.seed, 4, None)
    want = sampling.host_images(
        generator.gan, generator.params, z, generator.stage, 1.0, np.uint8, np.full(4, 2)
    )
    other = sampling.host_images(
        generator.gan, generator.params, z, generator.stage, 1.0, np.uint8, np.full(4, 0)
    )
    from PIL import Image

    got = np.stack([
        np.asarray(Image.open(tmp_path / "out" / "images" / f"0_{i:05d}.png")) for i in range(4)
    ])  # fmt: skip
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, other)


def test_latents_from_a_file_are_drawn_in_order_and_walked_through(tmp_path, tiny_config):
    """generate.latents: the PNGs are G's images of the file's latents, and the walk passes
    through each of them in turn (its keyframes)."""
    from PIL import Image

    from progan_jax.training import trained

    gen = tiny_config.generate
    tiny_config.checkpoint_images_shown = "untrained"
    gen.grid, gen.frames_per_keyframe = 2, 2
    z = np.random.default_rng(0).normal(size=(3, tiny_config.model.latent_size))
    np.save(tmp_path / "z.npy", z.astype(np.float32))
    gen.latents, gen.output = str(tmp_path / "z.npy"), str(tmp_path / "out")
    result = generate.write_generated(tiny_config, str(tmp_path))
    assert result["images"] == 3 and result["frames"] == 3 * 2
    generator = trained.load_generator(tiny_config, str(tmp_path), "untrained")
    want = sampling.host_images(generator.gan, generator.params, z, generator.stage, 1.0, np.uint8)
    got = np.stack([np.asarray(Image.open(tmp_path / "out" / "images" / f"0_{i:05d}.png"))
                    for i in range(3)])  # fmt: skip
    np.testing.assert_array_equal(got, want)
    with Image.open(tmp_path / "out" / "interpolation.gif") as gif:
        keyframes = []
        for index in (0, 2, 4):
            gif.seek(index)
            keyframes.append(np.asarray(gif.convert("RGB")))
    tile = tiny_config.model.resolution // want.shape[1]
    np.testing.assert_array_equal(keyframes, want.repeat(tile, 1).repeat(tile, 2))


def test_a_latents_file_of_another_size_names_both(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((4, 7), np.float32))
    with pytest.raises(errors.ConfigError, match=r"shape \(4, 7\).*latents \[N, 16\]"):
        generate.latents_file(str(tmp_path / "z.npy"), 16)
