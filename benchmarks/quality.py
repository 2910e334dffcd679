"""Image quality per wall-clock time: progan_jax against the tutorial's PyTorch ProGAN.

    idx=/usr/share/datasets/fashion-mnist
    python benchmarks/quality.py idx-to-png $idx/train-images-idx3-ubyte.gz /tmp/fmnist/train
    python benchmarks/quality.py idx-to-png $idx/t10k-images-idx3-ubyte.gz /tmp/fmnist/heldout
    python benchmarks/quality.py race --train /tmp/fmnist/train --heldout /tmp/fmnist/heldout \
        --minutes 10 --torch-python /path/to/torch-venv/bin/python
    python benchmarks/quality.py race --train /tmp/fmnist/train --heldout /tmp/fmnist/heldout \
        --sides progan_jax --override=--config.loss.gp_scale=native   # an ablation

Fashion-MNIST comes offline from Debian (`apt-get install dataset-fashion-mnist`); any two
folders of images work. Both sides train at 32x32 for the same wall-clock budget, counted from
their process's start (JAX's compilation and PyTorch's start-up included), at the same widths
(latent 128, 64 feature maps) on the same decoded images: progan_jax with
`configs/short_budget.py` (its batch sizes too), stopped by SIGTERM at the budget (its
preemption path saves a checkpoint); the tutorial's networks and `gradient_penalty` imported
from `--reference` (default `../shared/reference/torch_seed_progan.py` beside the checkout),
trained by the tutorial's loop (critic then generator on the same fakes, lr 1e-3, Adam
(0, 0.99), drift 1e-3, mirror flips unless `--no-tutorial-mirror`, batch 64/64/32/32 at
4..32 px unless `--tutorial-batches` says otherwise), each of its four stages given a quarter
of the budget with alpha rising over the first half of it. Both generators' images are
then scored with this project's multi-scale SWD against the held-out folder (and the train
images against it: the noise floor).
One JSON line per side; sample grids are written beside the work files.
"""

import argparse
import gzip
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = ROOT.parent / "shared" / "reference" / "torch_seed_progan.py"
RESOLUTION, LATENT, CHANNELS = 32, 128, 64
STAGES = 4  # 4x4..32x32


# ----------------------------------------------------------------------------- data


def read_idx(idx_file: pathlib.Path) -> np.ndarray:
    """An IDX array (MNIST's format, gzipped): uint8 images [N, H, W] or labels [N]."""
    with gzip.open(idx_file) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def idx_to_png(
    idx_file: pathlib.Path,
    folder: pathlib.Path,
    labels_file: pathlib.Path | None = None,
    classes: tuple[int, ...] | None = None,
) -> None:
    """An IDX image file as one grayscale PNG per image; with labels, only `classes`' images."""
    from PIL import Image

    images = read_idx(idx_file)
    if labels_file is not None:
        images = images[np.isin(read_idx(labels_file), classes)]
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    print(json.dumps({"images": len(images), "folder": str(folder)}))


def folder_config(path: pathlib.Path, cache_dir: pathlib.Path):
    """configs/short_budget.py on the folder, the data cache beside the work files."""
    sys.path.insert(0, str(ROOT))
    from configs import short_budget

    config = short_budget.get_config()
    config.data.path = str(path)
    config.data.cache_dir = str(cache_dir)
    return config


def decoded(path: pathlib.Path, cache_dir: pathlib.Path) -> np.ndarray:
    """The folder's images as progan_jax decodes them: uint8 [N, 32, 32, 3]."""
    from progan_jax.data import input_pipeline
    from progan_jax.runtime import stages

    config = folder_config(path, cache_dir)
    last = stages.num_stages(config.model.resolution) - 1  # per-stage tuples may run longer
    source = input_pipeline.source_of(config.data, RESOLUTION, 3)
    return np.asarray(input_pipeline.stage_images(source, last))


# ------------------------------------------------------------------------- progan_jax


def train_progan_jax(
    args: argparse.Namespace, workdir: pathlib.Path, config: str = "configs/short_budget.py"
) -> dict:
    """main.py for `args.minutes` from its start, then SIGTERM (it saves and exits)."""
    command = [
        sys.executable, "main.py", f"--config={config}",
        f"--workdir={workdir}", f"--config.data.path={args.train}",
        f"--config.data.cache_dir={args.cache}",
        "--compilation_cache=",  # every run compiles cold, as a first run does
        "--config.schedule.final_stabilize_images=1000000000",  # until the budget ends
        *args.override,
    ]  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT)
    try:
        process.wait(timeout=60 * args.minutes)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        process.wait()
    return {"seconds": round(time.monotonic() - started, 1), "exit_code": process.returncode}


def final_generator(config, workdir: pathlib.Path):
    """G_ema of the run's last checkpoint, which must have faded 32x32 in, in the networks the
    run trained (its checkpoint's, whatever --override flags it had)."""
    from progan_jax.training import trained

    generator = trained.load_generator(config, str(workdir), None)
    if generator.resolution != RESOLUTION or generator.alpha != 1.0:
        raise RuntimeError(
            f"the budget ended at stage {generator.stage}, alpha {generator.alpha:.2f}, before "
            "32x32 was faded in: give more --minutes or shorten configs/short_budget.py's phases"
        )
    return generator


def fake_images(generator, count: int, seed: int) -> np.ndarray:
    return np.concatenate([rows.host() for rows in generator.fake_minibatches(count, 256, seed)])


def progan_jax_images(args: argparse.Namespace, workdir: pathlib.Path, count: int) -> np.ndarray:
    config = folder_config(args.train, args.cache)
    return fake_images(final_generator(config, workdir), count, seed=123)


# ---------------------------------------------------------------- the tutorial, in torch


def train_tutorial(args: argparse.Namespace) -> None:
    """Runs under the torch interpreter: trains the reference's networks, saves images."""
    import importlib.util

    import torch
    import torch.nn.functional as F

    spec = importlib.util.spec_from_file_location("reference", args.reference)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    torch.manual_seed(0)
    reals = torch.from_numpy(np.load(args.reals)).permute(0, 3, 1, 2).contiguous() / 127.5 - 1
    gen = ref.Generator(LATENT, CHANNELS, img_size=RESOLUTION)
    critic = ref.Discriminator(RESOLUTION, LATENT, CHANNELS)
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.0, 0.99))
    opt_c = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.0, 0.99))
    stage_s = 60 * args.minutes / STAGES
    started, shown = time.monotonic(), 0
    for stage, batch in enumerate(args.batches):
        stage_start = time.monotonic()
        stage_reals = F.avg_pool2d(reals, 2 ** (STAGES - 1 - stage))
        while time.monotonic() - stage_start < stage_s:
            alpha = min((time.monotonic() - stage_start) / (stage_s / 2), 1.0)
            real = stage_reals[torch.randint(len(stage_reals), (batch,))]
            if args.mirror:
                real = torch.where(torch.rand(batch, 1, 1, 1) < 0.5, real.flip(3), real)
            fake = gen(torch.randn(batch, LATENT, 1, 1), alpha, stage)
            critic_real = critic(real, alpha, stage).reshape(-1)
            critic_fake = critic(fake.detach(), alpha, stage).reshape(-1)
            gp = ref.gradient_penalty(critic, real, fake.detach(), alpha, stage)
            loss_c = (
                critic_fake.mean() - critic_real.mean() + 10 * gp + 1e-3 * critic_real.pow(2).mean()
            )
            opt_c.zero_grad()
            loss_c.backward()
            opt_c.step()
            loss_g = -critic(fake, alpha, stage).mean()
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            shown += batch
    with torch.no_grad():
        z = torch.randn(args.count, LATENT, 1, 1)
        fakes = torch.cat([gen(z[i : i + 256], 1.0, STAGES - 1) for i in range(0, len(z), 256)])
    images = ((fakes.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255)
    np.save(args.out, images.astype(np.uint8))
    print(json.dumps({"seconds": round(time.monotonic() - started, 1), "images_shown": shown}))


def run_tutorial(args: argparse.Namespace, reals_file: pathlib.Path, count: int) -> dict:
    out = args.work / "tutorial_images.npy"
    command = [
        args.torch_python, __file__, "tutorial", f"--reference={args.reference}",
        f"--reals={reals_file}", f"--minutes={args.minutes}", f"--count={count}", f"--out={out}",
        "--mirror" if args.tutorial_mirror else "--no-mirror",
        f"--batches={','.join(map(str, args.tutorial_batches))}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return {**json.loads(result.stdout.splitlines()[-1]), "images": str(out)}


# ------------------------------------------------------------------------------- race


def swd_against(heldout: np.ndarray, sets: dict[str, np.ndarray]) -> dict[str, dict]:
    from progan_jax.metrics import swd

    def describe(images, seed):
        return swd.describe((images[i : i + 256] for i in range(0, len(images), 256)), 32, seed)

    reference = describe(heldout, 1)
    others = [describe(images, 2) for images in sets.values()]
    try:
        return dict(zip(sets, swd.distances(reference, others), strict=True))
    finally:
        for descriptors in (reference, *others):
            descriptors.close()


def race(args: argparse.Namespace) -> None:
    from progan_jax.nets import sampling

    workdir = args.work / "progan_jax"
    if "progan_jax" in args.sides and workdir.exists() and any(workdir.iterdir()):
        raise SystemExit(
            f"{workdir} holds an earlier run, which main.py would resume instead of training "
            "from scratch: give a new --work or remove it"
        )
    args.work.mkdir(parents=True, exist_ok=True)
    args.cache = args.cache or args.work / "cache"
    train = decoded(args.train, args.cache)  # decoded before either clock starts
    heldout = decoded(args.heldout, args.cache)[: args.count]
    rng = np.random.default_rng(0)
    sets = {"reals": train[rng.permutation(len(train))[: len(heldout)]]}
    runs = {}
    if "tutorial" in args.sides:
        reals_file = args.work / "train_images.npy"
        np.save(reals_file, train)
        runs["tutorial"] = {
            **run_tutorial(args, reals_file, len(heldout)),
            "mirror": args.tutorial_mirror,
            "batches": args.tutorial_batches,
        }
        sets["tutorial"] = np.load(runs["tutorial"]["images"])
    if "progan_jax" in args.sides:
        runs["progan_jax"] = {**train_progan_jax(args, workdir), "overrides": args.override}
        sets["progan_jax"] = progan_jax_images(args, workdir, len(heldout))
    scores = swd_against(heldout, sets)
    for name, images in sets.items():
        grid = sampling.image_grid(images[:64], 8, 64)
        sampling.save_png(args.work / f"{name}_grid.png", grid)
        line = {"side": name, "minutes": args.minutes, **scores[name], **runs.get(name, {})}
        print(json.dumps(line))


def integers(text: str) -> tuple[int, ...]:
    """'0,1,2': comma-separated integers."""
    return tuple(int(part) for part in text.split(","))


def batch_sizes(text: str) -> tuple[int, ...]:
    """'64,64,32,32': one positive batch size per stage, 4x4..32x32."""
    sizes = integers(text)
    if len(sizes) != STAGES or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{STAGES} positive batch sizes, e.g. 64,64,32,16")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    idx = commands.add_parser("idx-to-png")
    idx.add_argument("idx_file", type=pathlib.Path)
    idx.add_argument("folder", type=pathlib.Path)
    idx.add_argument("--labels", type=pathlib.Path, help="the IDX labels file, for --classes")
    idx.add_argument(
        "--classes",
        type=integers,
        help="keep only these labels, e.g. 0,1,2,3,4,6,8 (Fashion-MNIST without its footwear)",
    )
    run = commands.add_parser("race")
    run.add_argument("--train", type=pathlib.Path, required=True)
    run.add_argument("--heldout", type=pathlib.Path, required=True)
    run.add_argument("--minutes", type=float, default=10.0)
    run.add_argument("--count", type=int, default=4096, help="images scored per side")
    run.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/quality_race"))
    run.add_argument("--cache", type=pathlib.Path, help="decoded images (default: WORK/cache)")
    run.add_argument("--sides", default="progan_jax,tutorial", help="who trains this time")
    run.add_argument(
        "--override",
        action="append",
        default=[],
        help="a main.py flag for progan_jax that keeps the networks' shapes (an ablation), "
        "e.g. --override=--config.loss.gp_scale=native",
    )
    run.add_argument(
        "--tutorial-mirror",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the tutorial's random left-right flips of the reals (its own recipe; default on)",
    )
    run.add_argument(
        "--tutorial-batches",
        type=batch_sizes,
        default=(64, 64, 32, 32),
        help="the tutorial's batch size per stage, 4x4..32x32 (default 64,64,32,32)",
    )
    run.add_argument("--reference", type=pathlib.Path, default=DEFAULT_REFERENCE)
    run.add_argument("--torch-python", default=os.environ.get("TORCH_PYTHON", sys.executable))
    tutorial = commands.add_parser("tutorial")  # the torch side, run by `race`
    for name in ("--reference", "--reals", "--out"):
        tutorial.add_argument(name, type=pathlib.Path, required=True)
    tutorial.add_argument("--minutes", type=float, required=True)
    tutorial.add_argument("--count", type=int, required=True)
    tutorial.add_argument("--mirror", action=argparse.BooleanOptionalAction, required=True)
    tutorial.add_argument("--batches", type=batch_sizes, required=True)
    args = parser.parse_args()
    if args.command == "idx-to-png":
        if (args.labels is None) != (args.classes is None):
            parser.error("--labels and --classes go together")
        idx_to_png(args.idx_file, args.folder, args.labels, args.classes)
    elif args.command == "tutorial":
        train_tutorial(args)
    else:
        if not args.reference.is_file():
            parser.error(f"no reference at {args.reference}: pass --reference PATH")
        race(args)


if __name__ == "__main__":
    main()
