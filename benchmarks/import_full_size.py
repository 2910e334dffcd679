"""Importing a paper-size network file, and drawing 1024x1024 images from it, on the CPU.

    python benchmarks/import_full_size.py                     # the published files' format
    python benchmarks/import_full_size.py --format=v2 --rounds=3

Writes a synthetic official pickle at the paper's widths (1024x1024, G 23,079,115 and D
23,087,249 parameters, random weights; ~280 MB for G, D and Gs) with the test suite's writer,
then runs `main.py --mode=import` on it and `main.py --mode=generate` on the imported workdir
(configs/celeba_hq1024.py), each in a fresh process, and prints one JSON line per run: the
process's wall seconds and its peak RSS (`ru_maxrss` of the child). `--format` picks the
published Theano-era format, the official TF code's version 2, or a pytorch_GAN_zoo zip of
the same widths.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import gan_zoo_networks, network_files, official_networks  # noqa: E402

_SHARED_ARGS = dict(
    num_channels=3, resolution=1024, fmap_base=8192, fmap_decay=1.0, fmap_max=512, use_wscale=True
)
G_ARGS = dict(_SHARED_ARGS, latent_size=512, normalize_latents=True, use_pixelnorm=True)
D_ARGS = dict(_SHARED_ARGS)


def write_file(kind: str, path: pathlib.Path, seed: int = 0) -> tuple[int, int]:
    """A paper-size network file of `kind`; returns its parameters per network (G, D)."""
    rng = np.random.default_rng(seed)
    if kind == "gan_zoo":
        depths = [512, 512, 512, 512, 256, 128, 64, 32, 16]
        states = gan_zoo_networks.random_networks(depths, 512, rng)
        config = dict(
            depthScale0=512,
            depthOtherScales=depths[1:],
            latentVectorDim=512,
            categoryVectorDim=0,
            dimOutput=3,
            miniBatchStdDev=True,
            alpha=0.0,
        )
        tree = network_files.gan_zoo_checkpoint(states, config)
        network_files.write_torch(path, tree)
        return sum(v.size for v in states["netG"].values()), sum(
            v.size for v in states["netD"].values()
        )
    fused = kind == "v2"
    g_args, d_args = {**G_ARGS, "fused_scale": fused}, {**D_ARGS, "fused_scale": fused}
    if kind == "theano":
        d_args["mbstd_group_size"] = 16
    g_shapes = official_networks.generator_shapes(g_args)
    d_shapes = official_networks.critic_shapes(d_args)
    variables = [
        official_networks.random_variables(shapes, rng) for shapes in (g_shapes, d_shapes, g_shapes)
    ]
    if kind == "v2":
        network_files.write_official_v2(path, g_args, d_args, *variables, 0.0)
    else:
        spec = dict(G_ARGS)
        network_files.write_official_theano(path, spec, dict(D_ARGS), *variables, 0.0)
    return tuple(sum(v.size for v in tree.values()) for tree in variables[:2])


def timed(command: list[str]) -> dict:
    """Runs `command` in a fresh process: its wall seconds and peak RSS (`wait4`'s rusage of
    that process alone)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return {
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),  # KiB on Linux
        "output": json.loads(stdout.strip().splitlines()[-1]),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--format", choices=("theano", "v2", "gan_zoo"), default="theano")
    parser.add_argument("--rounds", type=int, default=1, help="imports timed (fresh workdirs)")
    parser.add_argument("--images", type=int, default=4, help="1024x1024 images to generate")
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    scratch = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="progan_import_"))
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / ("network.pth" if args.format == "gan_zoo" else "network.pkl")
    start = time.perf_counter()
    g_params, d_params = write_file(args.format, path)
    print(
        json.dumps(
            {
                "format": args.format,
                "file_mb": round(path.stat().st_size / 1e6, 1),
                "generator_params": int(g_params),
                "critic_params": int(d_params),
                "write_seconds": round(time.perf_counter() - start, 1),
            }
        ),
        flush=True,
    )
    main_py = [
        sys.executable,
        str(ROOT / "main.py"),
        "--config",
        str(ROOT / "configs" / "celeba_hq1024.py"),
        "--compilation_cache=",
    ]
    workdir = scratch / "workdir"
    for round_ in range(args.rounds):
        shutil.rmtree(workdir, ignore_errors=True)
        imported = timed(
            [*main_py, f"--workdir={workdir}", "--mode=import", f"--config.pretrained.path={path}"]
        )
        print(json.dumps({"run": "import", "round": round_, **imported}), flush=True)
    generated = timed(
        [
            *main_py,
            f"--workdir={workdir}",
            "--mode=generate",
            f"--config.generate.num_images={args.images}",
            "--config.generate.grid=2",
            "--config.generate.keyframes=1",
        ]
    )
    print(json.dumps({"run": "generate", **generated}), flush=True)
    if not args.dir:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main(sys.argv[1:])
