"""Class-conditional ProGAN on Fashion-MNIST: does G draw the class it is asked for?

    idx=/usr/share/datasets/fashion-mnist
    python benchmarks/conditional.py prepare --idx $idx --out /tmp/fmnist_classes
    python benchmarks/conditional.py run --train /tmp/fmnist_classes/train \
        --heldout /tmp/fmnist_classes/heldout --minutes 15

Fashion-MNIST comes offline from Debian (`apt-get install dataset-fashion-mnist`); `prepare`
writes its 60k training and 10k held-out images as one subfolder per class. `run` trains
`configs/fashion_conditional.py` and `configs/short_budget.py` (the same recipe without labels)
on the training folder, each for `--minutes` of wall-clock from its process's start, stopped by
SIGTERM as in benchmarks/quality.py, then asks each generator for `--count` images:

- agreement: the share of the conditional G's images, asked for in equal numbers per class,
  that a small convolutional classifier assigns to the class asked for. The classifier is
  trained on the training folder's decoded images (as the GAN sees them) until it scores 90%
  on the held-out ones, once: it is cached beside the decoded images. Its accuracy on the
  held-out reals is the ceiling agreement can be read against.
- SWD (x1e3, 32 and 16 px averaged) of both generators' images against the held-out images,
  with the training images' own distance as the noise floor.

One JSON line per side, and a grid of the conditional G's images, one class per row
(`conditional_grid.png` in --work, or --picture).
"""

import argparse
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import quality  # a sibling script: the training and scoring harness

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle-boot")  # fmt: skip
CONFIGS = {
    "conditional": "configs/fashion_conditional.py",
    "unconditional": "configs/short_budget.py",
}
CLASSIFIER_ACCURACY = 0.90  # the held-out accuracy the classifier must reach to judge G


# ----------------------------------------------------------------------------- data


def prepare(idx: pathlib.Path, out: pathlib.Path) -> None:
    """Fashion-MNIST's IDX files as `out/{train,heldout}/<id>-<class>/<n>.png`."""
    from PIL import Image

    for split, prefix in (("train", "train"), ("heldout", "t10k")):
        images = quality.read_idx(idx / f"{prefix}-images-idx3-ubyte.gz")
        labels = quality.read_idx(idx / f"{prefix}-labels-idx1-ubyte.gz")
        for label, name in enumerate(CLASSES):
            folder = out / split / f"{label}-{name}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images[labels == label]):
                Image.fromarray(image).save(folder / f"{i:05d}.png")
        print(json.dumps({"split": split, "images": len(images), "folder": str(out / split)}))


def labelled_config(path: pathlib.Path, cache_dir: pathlib.Path):
    """configs/fashion_conditional.py on a folder of class subfolders."""
    sys.path.insert(0, str(quality.ROOT))
    from configs import fashion_conditional

    config = fashion_conditional.get_config()
    config.data.path = str(path)
    config.data.cache_dir = str(cache_dir)
    return config


def labelled_images(path: pathlib.Path, cache_dir: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """The folder's images as the GAN sees them (uint8 [N, 32, 32, 3]) and their class ids."""
    from progan_jax.data import input_pipeline
    from progan_jax.runtime import stages

    config = labelled_config(path, cache_dir)
    source = input_pipeline.source_of(config.data, quality.RESOLUTION, 3)
    labels = input_pipeline.labels_of(source, config.model.label_size)
    if labels.names != tuple(f"{i}-{name}" for i, name in enumerate(CLASSES)):
        raise SystemExit(f"{path}: class folders {labels.names}; write them with `prepare`")
    last = stages.num_stages(config.model.resolution) - 1
    images = input_pipeline.stage_images(source, last)
    return np.asarray(images), labels.ids


# ------------------------------------------------------------------------ classifier


def classifier_module():
    import flax.linen as nn

    class Classifier(nn.Module):
        """Three 3x3 conv blocks and a dense layer: over 90% on Fashion-MNIST in a few epochs."""

        @nn.compact
        def __call__(self, images, train: bool = False):
            x = images.astype(np.float32).mean(-1, keepdims=True) / 127.5 - 1.0  # gray
            for features in (16, 32, 64):
                x = nn.relu(nn.Conv(features, (3, 3))(x))
                x = nn.max_pool(x, (2, 2), (2, 2))
            x = x.reshape(x.shape[0], -1)
            x = nn.Dropout(0.3, deterministic=not train)(x)
            return nn.Dense(len(CLASSES))(x)

    return Classifier()


def predict(params, images: np.ndarray, batch: int = 1000) -> np.ndarray:
    import jax

    model = classifier_module()
    apply = jax.jit(lambda p, x: model.apply(p, x).argmax(-1))
    return np.concatenate(
        [np.asarray(apply(params, images[i : i + batch])) for i in range(0, len(images), batch)]
    )


def train_classifier(train: tuple[np.ndarray, np.ndarray], epochs: int = 6, batch: int = 256):
    """Adam on the training images, a fixed seed."""
    import jax
    import optax

    images, labels = train
    model = classifier_module()
    key = jax.random.key(0)
    params = model.init(key, images[:1])
    optimizer = optax.adam(optax.cosine_decay_schedule(2e-3, epochs * (len(images) // batch)))
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, y, key):
        def loss(params):
            logits = model.apply(params, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(0)
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        for i in range(0, len(order) - batch + 1, batch):
            rows = order[i : i + batch]
            key, dropout = jax.random.split(key)
            params, opt_state = step(params, opt_state, images[rows], labels[rows], dropout)
        print(f"classifier: epoch {epoch + 1} of {epochs}", file=sys.stderr, flush=True)
    return params


def cached_classifier(
    train: tuple[np.ndarray, np.ndarray],
    heldout: tuple[np.ndarray, np.ndarray],
    cache: pathlib.Path,
) -> tuple[dict, dict]:
    """The classifier's parameters and its held-out scores, trained once per cache."""
    import flax.serialization
    import jax

    weights, scores_file = cache / "classifier.msgpack", cache / "classifier.json"
    template = classifier_module().init(jax.random.key(0), train[0][:1])
    if weights.exists() and scores_file.exists():
        params = flax.serialization.from_bytes(template, weights.read_bytes())
        return params, json.loads(scores_file.read_text())
    started = time.monotonic()
    params = train_classifier(train)
    predicted = predict(params, heldout[0])
    scores = {
        "classifier_heldout_accuracy": round(float((predicted == heldout[1]).mean()), 4),
        "classifier_train_seconds": round(time.monotonic() - started, 1),
    }
    if scores["classifier_heldout_accuracy"] < CLASSIFIER_ACCURACY:
        raise SystemExit(f"the classifier scored {scores}, under {CLASSIFIER_ACCURACY:.0%}")
    weights.write_bytes(flax.serialization.to_bytes(params))
    scores_file.write_text(json.dumps(scores))
    return params, scores


# ------------------------------------------------------------------------ generators


def trained_generator(side: str, args: argparse.Namespace, workdir: pathlib.Path):
    """A side's G_ema at the end of its budget."""
    if side == "conditional":
        config = labelled_config(args.train, args.cache)
    else:
        config = quality.folder_config(args.train, args.cache)
    return quality.final_generator(config, workdir)


def generated(generator, count: int) -> tuple[np.ndarray, np.ndarray | None]:
    """`count` images of G_ema; a conditional G's in equal numbers per class, with the class
    each was asked for."""
    if not generator.gan.label_size:
        return quality.fake_images(generator, count, seed=123), None
    per_class = count // len(CLASSES)
    images, asked = [], []
    for label in range(len(CLASSES)):
        images.append(quality.fake_images(generator.of_class(label), per_class, seed=123 + label))
        asked.append(np.full(per_class, label))
    return np.concatenate(images), np.concatenate(asked)


def agreement(params, images: np.ndarray, asked: np.ndarray) -> dict:
    predicted = predict(params, images)
    per_class = {
        name: round(float((predicted[asked == label] == label).mean()), 3)
        for label, name in enumerate(CLASSES)
    }
    return {"agreement": round(float((predicted == asked).mean()), 4), "per_class": per_class}


def class_shares(params, images: np.ndarray) -> dict:
    """How the classifier sorts an unconditional G's images: its coverage of the classes."""
    counts = np.bincount(predict(params, images), minlength=len(CLASSES))
    return {
        name: round(float(c / counts.sum()), 3) for name, c in zip(CLASSES, counts, strict=True)
    }


def class_grid(images: np.ndarray, asked: np.ndarray, columns: int = 10) -> np.ndarray:
    """`columns` images of each class, one class per row."""
    from progan_jax.nets import sampling

    rows = [images[asked == label][:columns] for label in range(len(CLASSES))]
    return sampling.image_grid(np.concatenate(rows), columns, 64)


def run(args: argparse.Namespace) -> None:
    from progan_jax.nets import sampling

    args.work.mkdir(parents=True, exist_ok=True)
    args.cache = args.cache or args.work / "cache"
    for side in args.sides:
        workdir = args.work / side
        if not args.scored_only and workdir.exists() and any(workdir.iterdir()):
            raise SystemExit(
                f"{workdir} holds an earlier run: give a new --work, remove it, or score it "
                "with --scored-only"
            )
    train = labelled_images(args.train, args.cache)  # decoded before any clock starts
    heldout = labelled_images(args.heldout, args.cache)
    params, classifier_scores = cached_classifier(train, heldout, args.cache)
    lines, sets = {}, {}
    for side in args.sides:
        workdir = args.work / side
        run_info = (
            {} if args.scored_only else quality.train_progan_jax(args, workdir, CONFIGS[side])
        )
        generator = trained_generator(side, args, workdir)
        images, asked = generated(generator, args.count)
        sets[side] = images
        if asked is None:
            scores = {"classifier_classes": class_shares(params, images)}
        else:
            scores = agreement(params, images, asked)
            grid = class_grid(images, asked)
            sampling.save_png(args.picture or args.work / "conditional_grid.png", grid)
        lines[side] = {
            "images_shown": generator.images_shown,
            **run_info,
            **scores,
            "overrides": args.override,
        }
    # SWD compares a pair on the first descriptors of the shorter set, and the folders list
    # their images class by class: the held-out and training images are drawn in random order.
    rng = np.random.default_rng(0)
    reference = heldout[0][rng.permutation(len(heldout[0]))[: args.count]]
    sets["reals"] = train[0][rng.permutation(len(train[0]))[: len(reference)]]
    lines["reals"] = {
        "agreement": round(float((predict(params, heldout[0]) == heldout[1]).mean()), 4),
        **classifier_scores,
    }
    swds = quality.swd_against(reference, sets)
    for side, line in lines.items():
        print(json.dumps({"side": side, "minutes": args.minutes, **swds[side], **line}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare")
    prep.add_argument("--idx", type=pathlib.Path, default="/usr/share/datasets/fashion-mnist")
    prep.add_argument("--out", type=pathlib.Path, required=True)
    go = commands.add_parser("run")
    go.add_argument("--train", type=pathlib.Path, required=True)
    go.add_argument("--heldout", type=pathlib.Path, required=True)
    go.add_argument("--minutes", type=float, default=15.0)
    go.add_argument("--count", type=int, default=4000, help="images scored per side")
    go.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/conditional"))
    go.add_argument("--cache", type=pathlib.Path, help="decoded images (default: WORK/cache)")
    go.add_argument("--picture", type=pathlib.Path, help="where the class grid goes")
    go.add_argument(
        "--scored-only",
        action="store_true",
        help="score the runs already in --work",
    )
    go.add_argument(
        "--sides",
        type=lambda text: tuple(text.split(",")),
        default=("conditional", "unconditional"),
        help="which runs train this time (conditional, unconditional)",
    )
    go.add_argument(
        "--override",
        action="append",
        default=[],
        help="a main.py flag for the runs, e.g. --override=--config.loss.cond_weight=2",
    )
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.idx, args.out)
    else:
        run(args)


if __name__ == "__main__":
    main()
