"""The three workdir writers reach a local GCS emulator, and nothing lands locally.

(a) etils.epath (tf.io.gfile backend), (b) an Orbax CheckpointManager (tensorstore
arrays + epath metadata + google-cloud-storage bucket lookup), (c) clu's default
metric writer (tf.summary event files through TF's own GCS filesystem). All run in
one subprocess with `GcsEmulator.subprocess_env()`; see tests/gcs_emulator.py.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap

import pytest

from tests.gcs_emulator import gcs_emulator

pytestmark = pytest.mark.slow  # the GCS emulator and a subprocess

BUCKET = "smoke-bucket"

CHILD = textwrap.dedent(
    """
    import numpy as np
    from etils import epath

    root = epath.Path("gs://{bucket}")

    # (a) epath: write / read / exists / glob / iterdir / mkdir.
    run = root / "x"
    (run / "config.json").write_text('{{"a": 1}}')
    (run / "img.png").write_bytes(bytes(range(256)) * 64)
    (run / "sub").mkdir(parents=True, exist_ok=True)
    (run / "sub" / "r.json").write_text("[]")
    assert (run / "config.json").exists() and not (run / "nope.json").exists()
    assert (run / "config.json").read_text() == '{{"a": 1}}'
    assert (run / "img.png").read_bytes() == bytes(range(256)) * 64
    assert run.is_dir()
    names = sorted(p.name for p in run.glob("*.*"))
    assert names == ["config.json", "img.png"], names
    assert [p.name for p in run.glob("*/*.json")] == ["r.json"]
    print("epath ok", flush=True)

    # (b) Orbax: save 3 steps (max_to_keep=2 deletes one), restore in a new manager.
    import orbax.checkpoint as ocp

    tree = {{"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.int32)}}
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    with ocp.CheckpointManager(root / "ckpt", options=options) as mngr:
        for step in (1, 2, 3):
            mngr.save(step, args=ocp.args.StandardSave(tree))
        mngr.wait_until_finished()
    with ocp.CheckpointManager(root / "ckpt") as mngr:
        assert mngr.all_steps() == [2, 3], mngr.all_steps()
        restored = mngr.restore(3, args=ocp.args.StandardRestore(tree))
    np.testing.assert_array_equal(restored["w"], tree["w"])
    np.testing.assert_array_equal(restored["b"], tree["b"])
    print("orbax ok", flush=True)

    # (c) clu default writer -> tf.summary event file on gs://.
    from clu import metric_writers

    writer = metric_writers.create_default_writer(str(root / "logs"))
    for step in range(3):
        writer.write_scalars(step, {{"loss": 1.0 / (step + 1)}})
    writer.write_images(2, {{"samples": np.random.rand(2, 8, 8, 3).astype(np.float32)}})
    writer.flush()
    writer.close()
    print("clu ok", flush=True)
    """
)


def _event_tags(data: bytes) -> dict[str, set[str]]:
    """tag -> plugin names, from a TFRecord file of tensorboard Event protos."""
    from tensorboard.compat.proto import event_pb2

    tags: dict[str, set[str]] = {}
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        record = data[offset + 12 : offset + 12 + length]
        offset += 12 + length + 4
        event = event_pb2.Event.FromString(record)
        for value in event.summary.value:
            tags.setdefault(value.tag, set()).add(value.metadata.plugin_data.plugin_name)
    return tags


def test_epath_orbax_and_clu_write_to_gcs_emulator(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    with gcs_emulator(BUCKET) as gcs:
        env = gcs.subprocess_env()
        env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        proc = subprocess.run(
            [sys.executable, "-c", CHILD.format(bucket=BUCKET)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, (
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}\nemulator:\n{gcs.log()}"
        )
        assert proc.stdout.split() == ["epath", "ok", "orbax", "ok", "clu", "ok"]

        # (a) epath objects.
        assert {"x/config.json", "x/img.png", "x/sub/r.json"} <= set(gcs.list_objects("x/"))
        assert gcs.read_object("x/config.json") == b'{"a": 1}'

        # (b) Orbax: steps 2 and 3 committed on GCS, step 1 garbage-collected,
        # array data written by tensorstore.
        ckpt = gcs.list_objects("ckpt/")
        assert {"ckpt/2/commit_success.txt", "ckpt/3/commit_success.txt"} <= set(ckpt), ckpt
        assert not [n for n in ckpt if n.startswith("ckpt/1/")], ckpt
        assert any("/ocdbt.process_0/d/" in n or "/d/" in n for n in ckpt), ckpt

        # (c) One event file with the scalar and the image.
        events = [n for n in gcs.list_objects("logs/") if "events.out.tfevents" in n]
        assert len(events) == 1, gcs.list_objects("logs/")
        tags = _event_tags(gcs.read_object(events[0]))
        assert "loss" in tags and "samples" in tags, tags
        assert "images" in tags["samples"], tags

        # TF reached the emulator only through the proxy, for googleapis hosts.
        assert gcs.proxied_hosts
        assert {h.split(":")[0] for h in gcs.proxied_hosts} <= {
            "www.googleapis.com",
            "storage.googleapis.com",
        }, gcs.proxied_hosts

    assert list(cwd.iterdir()) == []
