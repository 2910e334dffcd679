"""Generation and metrics over the device mesh: each device computes only its own slice of a
minibatch, and the images and numbers are those of one device computing all of it.

Counts are not multiples of the eight devices, so minibatches are padded and the padding
dropped; latents come in blocks of five, so minibatches span several blocks.
"""

import types

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from PIL import Image

from configs import tiny
from progan_jax.metrics import ms_ssim, swd
from progan_jax.nets import gan as gan_lib
from progan_jax.nets import sampling
from progan_jax.runtime import parallel
from progan_jax.training import checkpointing, train

STAGE, ALPHA = 2, 0.75  # 16x16, fading in
COUNT, BLOCK, SEED = 13, 5, 7


@pytest.fixture(scope="module")
def generator() -> sampling.GeneratorSnapshot:
    gan, state = gan_lib.initialize(tiny.get_config(), parallel.make_mesh())
    return sampling.GeneratorSnapshot(gan, state.generator_ema_params, STAGE, ALPHA, 0)


def one_device_images(generator: sampling.GeneratorSnapshot, z: jax.Array) -> np.ndarray:
    """The reference: the whole minibatch on one device."""
    device = jax.devices()[0]
    generate = jax.jit(generator.gan.generate, static_argnums=2)
    params, z = jax.device_put((generator.params, z), device)
    return np.asarray(generate(params, z, generator.stage, generator.alpha))


@pytest.fixture(scope="module")
def reference_blocks(generator) -> list[np.ndarray]:
    """The uint8 images of `generator.fake_minibatches(COUNT, BLOCK, SEED)`, one block at a time
    on one device: the latents of each block are drawn from the seed and the block's first index."""
    key = jax.random.key(SEED)
    blocks = []
    for start in range(0, COUNT, BLOCK):
        z = generator.gan.sample_latents(jax.random.fold_in(key, start), min(BLOCK, COUNT - start))
        blocks.append(sampling.to_uint8(one_device_images(generator, z)))
    return blocks


@pytest.mark.slow
def test_eight_devices_generate_what_one_device_does(generator):
    z = generator.gan.sample_latents(jax.random.key(0), COUNT)
    got = sampling.host_images(generator.gan, generator.params, z, STAGE, ALPHA)
    np.testing.assert_allclose(got, one_device_images(generator, z), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_each_device_generates_only_its_own_latents(generator):
    """13 latents on 8 devices: padded to 16, two per device, in order; the compiled program
    of each device takes its two latents and makes two images (no device makes all 16)."""
    z = generator.gan.sample_latents(jax.random.key(0), COUNT)
    rows = sampling.sharded_images(generator.gan, generator.params, z, STAGE, ALPHA)
    assert rows.count == COUNT and rows.array.shape == (16, 16, 16, 3)
    assert rows.array.sharding.spec == PartitionSpec(parallel.DATA_AXIS)
    shards = sorted(rows.array.addressable_shards, key=lambda shard: shard.index[0].start)
    assert [shard.data.shape[0] for shard in shards] == [2] * 8
    expected = sampling.to_uint8(one_device_images(generator, z))
    np.testing.assert_array_equal(rows.host(), expected)

    fn = sampling.generator_fn(generator.gan, STAGE, rows.mesh, 2, np.dtype(np.uint8))
    padded = parallel.shard_rows(np.asarray(z), rows.mesh).array
    hlo = fn.lower((generator.params, np.float32(ALPHA)), (padded, None)).compile().as_text()
    entry = hlo[hlo.index("ENTRY") :]
    assert "f32[2,16]" in entry and "u8[2,16,16,3]" in entry
    assert "[16,16]" not in entry and "[16,16,16,3]" not in entry
    assert "all-gather" not in hlo


@pytest.mark.slow
def test_generated_minibatches_span_blocks_and_keep_their_latents(generator, reference_blocks):
    batches = list(generator.fake_minibatches(COUNT, BLOCK, SEED))
    assert len(batches) == 1  # 13 images fit one minibatch at 16x16 on 8 devices
    np.testing.assert_array_equal(batches[0].host(), np.concatenate(reference_blocks))


@pytest.mark.slow
def test_generated_swd_descriptors_do_not_depend_on_the_devices(generator, reference_blocks):
    """Neighbourhood centres are drawn per block of latents, as when each block was a minibatch
    on one device; so are the descriptors of the blocks on one device."""
    with (
        swd.describe(
            generator.fake_minibatches(COUNT, BLOCK, SEED), 16, seed=1, block=BLOCK
        ) as sharded,
        swd.describe(reference_blocks, 16, seed=1) as one_device,
    ):
        assert sharded.count == one_device.count == COUNT * swd.NHOODS_PER_IMAGE
        np.testing.assert_allclose(
            np.asarray(sharded.level(0)), np.asarray(one_device.level(0)), rtol=0, atol=1e-5
        )


@pytest.mark.slow
def test_generated_ms_ssim_does_not_depend_on_the_devices(generator, reference_blocks):
    sharded = ms_ssim.consecutive_pairs_ms_ssim(generator.fake_minibatches(COUNT, BLOCK, SEED))
    assert sharded == pytest.approx(ms_ssim.consecutive_pairs_ms_ssim(reference_blocks), rel=1e-6)


@pytest.mark.slow
def test_ms_ssim_pairs_of_an_odd_minibatch_continue_into_the_next(generator, reference_blocks):
    """Minibatches of 7 and 6: the 7th image pairs with the 8th, across minibatches."""
    images = np.concatenate(reference_blocks)
    rows = parallel.shard_rows(images[:7], parallel.make_mesh(), size=16)  # two per device
    got = ms_ssim.consecutive_pairs_ms_ssim([rows, images[7:]])
    expected = ms_ssim.ms_ssim(images[0:12:2], images[1:12:2])
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("resolution", "per_device"), [(4, 64), (128, 64), (256, 64), (512, 16), (1024, 4)]
)
def test_each_device_generates_fewer_images_at_once_as_they_grow(resolution, per_device):
    assert sampling.generation_group(resolution) == per_device


@pytest.mark.slow
def test_samples_in_tensorboard_are_at_most_256_pixels_a_side_and_the_png_full_size(tmp_path):
    """A 2x2 grid of 512x512 samples: 256-pixel tiles (2x2 box filtered) in TensorBoard, the
    full 512-pixel tiles in the PNG, each encoded once."""
    config = tiny.get_config()
    config.model.update(resolution=512, latent_size=8, fmap_base=4, fmap_max=4, fmap_decay=0.0)
    gan = gan_lib.GAN.from_config(config)
    z = gan.sample_latents(jax.random.key(0), 4)
    params = gan.generator.init(jax.random.key(1), z, stage=7, alpha=1.0)["params"]
    written = []
    trainer = types.SimpleNamespace(
        _sampled_at=-1,
        gan=gan,
        config=config,
        latents=z,
        grid_labels=None,
        workdir=tmp_path,
        writer=types.SimpleNamespace(write_images=lambda step, images: written.append(images)),
    )
    progress = checkpointing.Progress(images_shown=100, phase_index=14)
    state = types.SimpleNamespace(generator_ema_params=params)
    train.Trainer.write_samples(trainer, state, progress, 7, 1.0)

    [tensorboard] = [images["samples"] for images in written]
    png = np.asarray(Image.open(tmp_path / "samples" / "000000100.png"))
    assert tensorboard.shape == (1, 512, 512, 3) and tensorboard.dtype == np.uint8
    assert png.shape == (1024, 1024, 3)
    boxes = png.reshape(512, 2, 512, 2, 3).mean(axis=(1, 3))
    np.testing.assert_array_equal(tensorboard[0], np.rint(boxes).astype(np.uint8))


def test_small_samples_are_enlarged_to_the_tile():
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    grid = sampling.image_grid(images, 2, 8)
    assert grid.shape == (8, 16, 3)
    np.testing.assert_array_equal(grid[:, :8], images[0].repeat(2, 0).repeat(2, 1))


@pytest.mark.slow
def test_only_process_0_writes_generated_files(tmp_path, tiny_config, monkeypatch):
    """Every process generates (the generator spans all devices); one writes the files."""
    from progan_jax.modes import generate

    gen = tiny_config.generate
    tiny_config.checkpoint_images_shown = "untrained"
    gen.num_images, gen.grid, gen.keyframes = 4, 2, 2
    gen.output = str(tmp_path / "out")
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    result = generate.write_generated(tiny_config, str(tmp_path))
    assert result["stage"] == 2 and not (tmp_path / "out").exists()
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    result = generate.write_generated(tiny_config, str(tmp_path))
    assert result["images"] == 4 and (tmp_path / "out" / "interpolation.gif").exists()


def test_a_conditional_generator_asked_for_one_class_draws_only_it():
    """`of_class` on a G as a checkpoint loads it (no class shares yet): every image is G's
    image of that class for the same latents."""
    config = tiny.get_config()
    config.model.label_size = 3
    gan, state = gan_lib.initialize(config, parallel.make_mesh())
    loaded = sampling.GeneratorSnapshot(gan, state.generator_ema_params, STAGE, ALPHA, 0)
    got = np.concatenate([b.host() for b in loaded.of_class(2).fake_minibatches(6, 3, SEED)])
    key = jax.random.key(SEED)
    z = np.concatenate([gan.sample_latents(jax.random.fold_in(key, i), 3) for i in (0, 3)])

    def drawn(label: int) -> np.ndarray:
        labels = np.full(6, label)
        return sampling.host_images(gan, state.generator_ema_params, z, STAGE, ALPHA,
                                        np.uint8, labels)  # fmt: skip

    np.testing.assert_array_equal(got, drawn(2))
    assert not np.array_equal(got, drawn(0))
