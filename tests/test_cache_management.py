"""`--mode=caches` (progan_jax.data.cache_management): the cache files listed, which are stale
and why, and their removal."""

import concurrent.futures
import fcntl
import json
import logging
import os
import pathlib
import time

import numpy as np
import pytest

from configs import tiny
from progan_jax.data import cache_management, input_pipeline, sources, synthetic
from progan_jax.training import config_checks
from tests import runs

OLD_DAYS = 40  # more than the default data.stale_cache_days


def _folder(data) -> pathlib.Path:
    return sources.resolve(data, 16, 3).cache_path().parent


def _age(folder: pathlib.Path, days: float) -> None:
    then = time.time() - days * 86400
    for path in folder.iterdir():
        os.utime(path, (then, then))


def _stale_setup(data) -> tuple[pathlib.Path, pathlib.Path, set[pathlib.Path]]:
    """Fresh caches (16x16 and 8x8), a cache unused for `OLD_DAYS`, and leftovers: the two
    folders and the files that are stale."""
    input_pipeline.stage_images(input_pipeline.source_of(data, 16, 3), 1)
    fresh = _folder(data)
    old_data = data.copy_and_resolve_references()
    old_data.synthetic_seed = 1
    sources.resolve(old_data, 16, 3).load_images()
    old = _folder(old_data)
    _age(old, OLD_DAYS)
    leftovers = {
        "images_32.u8": b"old raw array",
        "images_32.json": b"{}",
        "images_4.npy.partial": b"an interrupted build",
        "images_4.progress.json": b"{}",
        "images_4.npy.otherhost.7.0123abcd.tmp": b"a killed writer's",
    }
    for name, content in leftovers.items():
        (fresh / name).write_bytes(content)
    (fresh.parent / "xla").mkdir()  # the compilation cache's default folder: not ours
    (fresh.parent / "xla" / "entry").write_bytes(b"compiled")
    return fresh, old, {fresh / name for name in leftovers} | {old / "images_16.npy"}


def test_listing_shows_each_file_and_why_it_is_stale(data):
    fresh, old, stale = _stale_setup(data)
    root = fresh.parent
    *lines, summary = cache_management.cache_report(data)
    by_name = {line["name"]: line for line in lines}
    base = by_name[f"{fresh.name}/images_16.npy"]
    assert base["shape"] == (8, 16, 16, 3) and base["dtype"] == "uint8"
    assert base["bytes"] == (fresh / "images_16.npy").stat().st_size
    assert not base["stale"] and not base["removed"]
    assert {name for name, line in by_name.items() if line["stale"]} == {
        str(path.relative_to(root)) for path in stale
    }
    assert not any(name.startswith("xla") for name in by_name)
    assert "old format" in by_name[f"{fresh.name}/images_32.u8"]["reason"]
    assert "interrupted build" in by_name[f"{fresh.name}/images_4.npy.partial"]["reason"]
    assert by_name[f"{old.name}/images_16.npy"]["reason"].startswith(f"not used for {OLD_DAYS}")
    stale_bytes = sum(path.stat().st_size for path in stale)
    assert summary["stale"] == len(stale) and summary["stale_bytes"] == stale_bytes
    assert summary["bytes_freed"] == 0 and "remove_stale_caches=True" in summary["hint"]
    assert all(path.exists() for path in stale)
    json.dumps([*lines, summary])  # what main.py prints
    # Listing a cache is not using it: still stale the next time.
    assert any(
        f.stale for f in cache_management.list_caches(data) if f.path == old / "images_16.npy"
    )


def test_removal_frees_the_stale_files_and_keeps_the_rest(data, monkeypatch):
    fresh, old, stale = _stale_setup(data)
    stale_bytes = sum(path.stat().st_size for path in stale)
    kept = np.array(input_pipeline.stage_images(input_pipeline.source_of(data, 16, 3), 1))
    data.remove_stale_caches = True
    *lines, summary = cache_management.cache_report(data)
    assert summary["removed"] == len(stale) and summary["bytes_freed"] == stale_bytes
    assert {line["name"] for line in lines if line["removed"]} == {
        str(path.relative_to(fresh.parent)) for path in stale
    }
    assert not old.exists()  # emptied: the folder went too
    assert sorted(p.name for p in fresh.iterdir()) == [".lock", "images_16.npy", "images_8.npy"]
    assert (fresh.parent / "xla" / "entry").exists()
    monkeypatch.setattr(synthetic, "draw_face", None)  # the kept caches need no decoding
    np.testing.assert_array_equal(
        input_pipeline.stage_images(input_pipeline.source_of(data, 16, 3), 1), kept
    )


def test_a_cache_a_run_reads_is_not_stale(data):
    sources.resolve(data, 16, 3).load_images()
    _age(_folder(data), OLD_DAYS)
    assert all(f.stale for f in cache_management.list_caches(data))
    sources.resolve(data, 16, 3).load_images()  # a run reads it
    assert not any(f.stale for f in cache_management.list_caches(data))


def _partial_build(data) -> pathlib.Path:
    """A key folder holding only an interrupted build's partial file."""
    folder = _folder(data)
    folder.mkdir(parents=True)
    partial = folder / "images_16.npy.partial"
    partial.write_bytes(b"an interrupted build")
    return partial


def test_a_folder_where_a_process_builds_is_left_alone(data):
    partial = _partial_build(data)
    with open(partial.parent / ".lock", "ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a live builder
        files = cache_management.list_caches(data, remove=True)
    assert [f.path for f in files] == [partial] and not files[0].stale
    assert partial.exists()


def test_a_builder_that_waited_on_a_removed_folder_builds_in_a_new_one(data, caplog):
    """The clean-up removed the folder and its lock file while a builder waited on that file."""
    partial = _partial_build(data)
    folder = partial.parent
    want = np.array(sources.resolve(_other_cache_dir(data), 16, 3).load_images().images)
    with (
        caplog.at_level(logging.INFO),
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        open(folder / ".lock", "ab") as lock,
    ):
        fcntl.flock(lock, fcntl.LOCK_EX)  # the clean-up holds the folder
        builder = pool.submit(sources.resolve(data, 16, 3).load_images)
        deadline = time.monotonic() + 60
        while "Waiting for another process" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "Waiting for another process" in caplog.text  # the builder waits on the lock
        for path in folder.iterdir():  # what remove_stale_caches does to an all-stale folder
            path.unlink()
        folder.rmdir()
        fcntl.flock(lock, fcntl.LOCK_UN)
        np.testing.assert_array_equal(builder.result(timeout=60).images, want)
    assert (folder / "images_16.npy").exists()


def _other_cache_dir(data):
    other = data.copy_and_resolve_references()
    other.cache_dir = str(pathlib.Path(data.cache_dir).parent / "other")
    return other


def test_negative_stale_days_is_a_config_error(data):
    data.stale_cache_days = -1.0
    with pytest.raises(config_checks.ConfigError, match=r"data\.stale_cache_days"):
        config_checks.validate_cache_management(data)


@pytest.mark.slow
def test_mode_caches_prints_the_listing_and_removes_with_the_flag(tmp_path):
    """The command line: `runs` points the data cache at tmp_path / 'data_cache'."""
    data = tiny.get_config().data
    data.cache_dir = str(tmp_path / "data_cache")
    sources.resolve(data, 16, 3).load_images()
    (_folder(data) / "images_16.npy.host.1.ab.tmp").write_bytes(b"left by a killed writer")
    flag = "--config.data.remove_stale_caches=True"
    result = runs.run(tmp_path / "workdir", tmp_path / "xla", "--mode=caches", flag)
    assert result.returncode == 0, result.stderr
    *files, summary = [json.loads(line) for line in result.stdout.splitlines()]
    assert [f["name"].split("/")[1] for f in files] == [
        "images_16.npy",
        "images_16.npy.host.1.ab.tmp",
    ]
    assert summary["removed"] == 1 and summary["bytes_freed"] == len(b"left by a killed writer")
