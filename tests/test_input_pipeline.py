"""Per-stage image streams (progan_jax.data.input_pipeline): the deterministic stream, its
mirror flags and resumption, process shares and shards, device sharding, stage caches."""

import hashlib
import pathlib

import jax
import numpy as np
import pytest

from progan_jax.data import input_pipeline, sources, synthetic
from progan_jax.runtime import parallel
from progan_jax.training import config_checks, train_step
from tests.builds import counting


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _stream(images, **kwargs):
    defaults = dict(seed=3, start=0, batch_size=8, mirror=False)
    return input_pipeline.train_batches(images, **{**defaults, **kwargs})


def _decoded(iterator, n):
    """The next `n` batches as the step sees them: float32 reals."""
    return [train_step.decode_reals(b, np) for b in _take(iterator, n)]


# sha256 (first 16 hex digits) of the float32 reals of 4 mirrored batches of 8 drawn from 13
# random images, as the stream delivered them when it converted and mirrored on the host.
_GOLDEN = {
    "whole": ({}, "52b809d3d31504aa"),
    "process 1 of 2": (dict(start=40, process_index=1, process_count=2), "fee2c29c83677941"),
    "shard 1 of 2": (
        dict(start=16, process_index=1, process_count=2, sharded=True),
        "2b816003e07f8c6e",
    ),
}


@pytest.mark.parametrize("case", _GOLDEN)
def test_decoded_stream_is_bit_identical_to_the_float_stream_of_before(case):
    """uint8 with flags, decoded, is exactly what the host used to convert and mirror."""
    kwargs, digest = _GOLDEN[case]
    images = np.random.default_rng(5).integers(0, 256, (13, 4, 4, 3), dtype=np.uint8)
    reals = np.concatenate(_decoded(_stream(images, mirror=True, **kwargs), 4))
    assert reals.dtype == np.float32
    assert hashlib.sha256(reals.tobytes()).hexdigest()[:16] == digest


def test_batches_are_unmirrored_uint8_with_the_hashed_mirror_flags():
    images = np.random.default_rng(6).integers(0, 256, (13, 4, 4, 3), dtype=np.uint8)
    for mirror in (False, True):
        batch = next(_stream(images, mirror=mirror, start=16))
        assert set(batch) == {"images", "mirror"}
        assert batch["images"].dtype == np.uint8 and batch["images"].shape == (8, 4, 4, 3)
        assert batch["mirror"].dtype == bool and batch["mirror"].shape == (8,)
        flags = input_pipeline.mirror_flags(3, np.arange(16, 24)) if mirror else np.zeros(8)
        np.testing.assert_array_equal(batch["mirror"], flags)
        rows = {x.tobytes() for x in batch["images"]}
        assert rows <= {x.tobytes() for x in images}  # as cached, whatever the flag


def test_stream_values_shapes_and_order_follow_the_seed():
    images = np.random.default_rng(0).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    first = _decoded(_stream(images), 5)
    assert all(b.shape == (8, 4, 4, 3) and b.dtype == np.float32 for b in first)
    stacked = np.concatenate(first)
    assert stacked.min() >= -1.0 and stacked.max() <= 1.0
    # 40 positions = two epochs of 20, each a permutation of the whole set.
    as_uint8 = np.rint((stacked + 1) * 127.5).astype(np.uint8)
    for epoch in (as_uint8[:20], as_uint8[20:40]):
        assert sorted(x.tobytes() for x in epoch) == sorted(x.tobytes() for x in images)
    np.testing.assert_array_equal(np.concatenate(_decoded(_stream(images), 5)), stacked)
    assert not np.array_equal(np.concatenate(_decoded(_stream(images, seed=4), 5)), stacked)


def test_stream_resumes_mid_way():
    images = np.random.default_rng(1).integers(0, 256, (13, 4, 4, 3), dtype=np.uint8)
    whole = _take(_stream(images, mirror=True), 6)
    resumed = _take(_stream(images, mirror=True, start=3 * 8), 3)
    for a, b in zip(whole[3:], resumed, strict=True):
        for field in ("images", "mirror"):
            np.testing.assert_array_equal(a[field], b[field])


def test_mirror_flips_about_half_the_images():
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(1, 4, 4, 3)
    images = np.repeat(image, 64, axis=0)
    batch = train_step.decode_reals(next(_stream(images, batch_size=64, mirror=True)), np)
    flat = np.rint((batch + 1) * 127.5).astype(np.uint8)
    flipped = np.array([np.array_equal(x, image[0, :, ::-1]) for x in flat])
    kept = np.array([np.array_equal(x, image[0]) for x in flat])
    assert (flipped | kept).all()
    assert 20 < flipped.sum() < 44


def test_process_shares_are_disjoint_and_make_up_the_global_batch():
    images = np.random.default_rng(2).integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    whole = _decoded(_stream(images, mirror=True), 4)
    shares = [
        _decoded(_stream(images, mirror=True, process_index=i, process_count=4), 4)
        for i in range(4)
    ]
    for b in range(4):
        parts = [share[b] for share in shares]
        assert all(p.shape == (2, 4, 4, 3) for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), whole[b])
    positions = [np.arange(*input_pipeline.local_rows(8, i, 4)) for i in range(4)]
    assert len(set(np.concatenate(positions))) == 8


def test_stage_batches_are_sharded_over_eight_devices(data_config):
    mesh = parallel.make_mesh()
    source = input_pipeline.source_of(data_config.data, 16, 3)
    local = input_pipeline.stage_train_batches(data_config, source, 1, start=0, batch_size=16)
    want = next(input_pipeline.stage_train_batches(data_config, source, 1, 0, batch_size=16))
    batch = next(input_pipeline.prefetch_to_mesh(local, mesh))
    assert batch["images"].shape == (16, 8, 8, 3) and batch["images"].dtype == np.uint8
    assert batch["mirror"].shape == (16,) and batch["mirror"].dtype == bool
    for field, rows in (("images", (2, 8, 8, 3)), ("mirror", (2,))):
        assert len(batch[field].addressable_shards) == 8
        assert {s.data.shape for s in batch[field].addressable_shards} == {rows}
        assert batch[field].sharding.spec == jax.sharding.PartitionSpec("data")
        np.testing.assert_array_equal(batch[field], want[field])
    # The step's decoding on the devices is the host's reference, bit for bit.
    reals = jax.jit(train_step.decode_reals)(batch)
    np.testing.assert_array_equal(reals, train_step.decode_reals(want, np))
    # The stage's images are the box-filtered base images.
    base = source.load_images().images
    stage = input_pipeline.stage_images(source, 1)
    np.testing.assert_array_equal(stage, sources.box_downsample(np.asarray(base), 2))


def test_prepare_all_stages_caches_every_stage_once(data_config, monkeypatch):
    data, faces = data_config.data, synthetic.draw_faces(40, 16)
    want = [sources.box_downsample(faces, 4 // 2**stage) for stage in range(3)]
    drawn = counting(monkeypatch, synthetic, "draw_face")
    filtered = counting(monkeypatch, sources, "box_downsample")
    source = input_pipeline.source_of(data, 16, 3)
    input_pipeline.prepare_all_stages(source, first_stage=1)
    (key,) = pathlib.Path(data.cache_dir).iterdir()
    assert sorted(p.name for p in key.glob("*.npy")) == ["images_16.npy", "images_8.npy"]
    input_pipeline.prepare_all_stages(source)
    assert sorted(p.name for p in key.glob("*.npy")) == [f"images_{r}.npy" for r in (16, 4, 8)]
    done = len(drawn), len(filtered)
    input_pipeline.prepare_all_stages(source)  # all cached: opened, nothing built
    for stage in range(3):  # each stage's images are read from its cache
        np.testing.assert_array_equal(input_pipeline.stage_images(source, stage), want[stage])
    assert (len(drawn), len(filtered)) == done


def test_sharded_streams_read_only_their_shard_and_resume():
    images = synthetic.draw_faces(10, 4)
    for index in range(2):
        first, last = sources.Shard(index, 2).bounds(10)
        shard = images[first:last]
        stream = dict(seed=3, batch_size=4, process_index=index, process_count=2, sharded=True)
        whole = _decoded(_stream(shard, **stream), 6)  # 12 rows: more than an epoch of 5
        as_uint8 = np.rint((np.concatenate(whole) + 1) * 127.5).astype(np.uint8)
        own = {x.tobytes() for x in shard}
        assert {x.tobytes() for x in as_uint8} == own
        assert len({x.tobytes() for x in as_uint8[:5]}) == 5  # a permutation per epoch
        resumed = _decoded(_stream(shard, **{**stream, "start": 3 * 4}), 3)
        for a, b in zip(whole[3:], resumed, strict=True):
            np.testing.assert_array_equal(a, b)


def test_labels_travel_with_their_images_and_resume_with_them():
    """Each batch row's label is its image's: image i holds the value i, label i % 7 (also
    in a process's sharded stream, and from a resumed position)."""
    images = np.arange(37, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    labels = (np.arange(37) % 7).astype(np.int32)
    for kwargs in ({}, {"process_index": 1, "process_count": 2, "sharded": True}):
        stream = _take(_stream(images, labels=labels, **kwargs), 6)
        for batch in stream:
            np.testing.assert_array_equal(batch["labels"], batch["images"][:, 0, 0, 0] % 7)
            assert batch["labels"].dtype == np.int32
        resumed = _take(_stream(images, labels=labels, start=3 * 8, **kwargs), 3)
        for want, got in zip(stream[3:], resumed, strict=True):
            np.testing.assert_array_equal(got["labels"], want["labels"])
    assert "labels" not in next(_stream(images))


def test_the_data_sets_classes_must_be_the_networks(data_config):
    data_config.data.labels = "skin_tone"
    data_config.model.label_size = 3
    source = input_pipeline.source_of(data_config.data, 16, 3)
    labels = input_pipeline.labels_of(source, 3)
    np.testing.assert_allclose(
        input_pipeline.class_frequencies(labels, data_config.data),
        labels.counts() / labels.counts().sum(),
    )
    with pytest.raises(
        config_checks.ConfigError,
        match=r"model\.label_size: 4, but data\.labels='skin_tone' gives 3",
    ):
        input_pipeline.labels_of(source, 4)
