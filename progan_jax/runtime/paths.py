"""Paths of the workdir and its outputs, on a local disk or in a bucket (`gs://...`).

Everything written under the workdir (config.json, checkpoints, TensorBoard events, sample
grids, evaluation results, generated images, FID statistics) goes through `etils.epath`, which
understands object stores as well as local paths; `pathlib` would turn `gs://b/run` into a
local folder `gs:/b/run`.
"""

import os
import threading

from etils import epath

from progan_jax.runtime.errors import UserError


class UnreachableError(UserError, OSError):
    """The workdir (or another output path) cannot be reached; the message says what to check."""


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a URL (`gs://...`, `s3://...`) rather than a local path."""
    return "://" in str(path)


def resolve(path: str | os.PathLike) -> epath.Path:
    """`path` as an `epath.Path`: a bucket path as it is, a local one expanded and absolute."""
    if is_remote(path):
        return epath.Path(str(path))
    return epath.Path(os.path.abspath(os.path.expanduser(str(path))))


def ensure_directory(path: epath.Path, timeout_s: float) -> None:
    """Creates `path` (and parents) or raises `UnreachableError` within `timeout_s` seconds.

    Storage clients retry with backoff for minutes when a bucket is unreachable or the
    credentials are wrong; a run must say so at start instead of appearing to hang. The probe
    runs on a daemon thread, so a client stuck in its retries does not keep the process alive.
    """
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
            next(iter(path.iterdir()), None)
            outcome.append(None)
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=probe, name="storage-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise UnreachableError(
            f"{path} did not answer within {timeout_s:g} s. Check that the bucket exists, that "
            "this machine can reach it and has credentials for it (gcloud auth "
            "application-default login, or the VM's service account), or raise "
            "--storage_timeout."
        )
    if outcome[0] is not None:
        raise UnreachableError(f"Cannot create or list {path}: {outcome[0]}") from outcome[0]
