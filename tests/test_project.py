"""--mode=project (progan_jax.modes.project): a latent the generator drew an image from is found
again, a killed projection resumes from the next image, and bad input is named."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from progan_jax.metrics import inception
from progan_jax.modes import project
from progan_jax.nets import gan as gan_lib
from progan_jax.nets import sampling
from progan_jax.runtime import interrupt, parallel
from progan_jax.runtime.errors import ConfigError, MissingFileError
from progan_jax.training import checkpointing, trained


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """A workdir whose G_ema draws images inside [-1, 1] (its toRGB scaled down, so that PNGs
    clip nothing), and a folder of four of its images with their latents."""
    root = tmp_path_factory.mktemp("project")
    config = tiny.get_config()
    _, state = gan_lib.initialize(config, parallel.make_mesh())
    params = {
        name: jax.tree.map(lambda w: w * 0.3, layer) if name.startswith("to_rgb") else layer
        for name, layer in state.generator_ema_params.items()
    }
    checkpointer = checkpointing.Checkpointer(root / "run")
    checkpointer.save(
        state.replace(generator_ema_params=params), checkpointing.Progress(320, 4, 2, 1.0)
    )
    checkpointer.close()
    generator = trained.load_generator(config, str(root / "run"), None)
    z = np.random.default_rng(5).standard_normal((4, config.model.latent_size)).astype(np.float32)
    images = sampling.host_images(generator.gan, generator.params, z, 2, 1.0, np.uint8)
    (root / "photos").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(root / "photos" / f"{i}.png")
    return root, z


def projection_config(root, **project_fields):
    config = tiny.get_config()
    config.project.update(
        dict(images=str(root / "photos"), output=str(root / "out"), perceptual_weight=0.0,
             steps=300, restarts=2, batch_size=2) | project_fields
    )  # fmt: skip
    return config


def test_a_latent_the_generator_drew_from_is_recovered(drawn, tmp_path):
    root, z = drawn
    config = projection_config(root, output=str(tmp_path / "out"))
    summary = project.project_images(config, str(root / "run"))
    assert summary["images"] == 4 and summary["psnr"] > 45  # the PNGs' rounding: ~59 dB
    latents = np.load(tmp_path / "out" / "latents.npy")
    cosine = np.sum(latents * z, 1) / np.linalg.norm(latents, axis=1) / np.linalg.norm(z, axis=1)
    assert cosine.min() > 0.999  # G normalises its latent: the direction is what is found
    assert json.loads((tmp_path / "out" / "latents.json").read_text()) == [
        f"{i}.png" for i in range(4)
    ]
    grid = np.asarray(Image.open(tmp_path / "out" / "reconstructions.png"))
    assert grid.shape == (16, 8 * 16, 3)  # each original beside its reconstruction
    records = [json.loads(line) for line in (tmp_path / "out" / project.RECORDS).open()]
    assert [r["name"] for r in records] == latents_names(4)
    assert all(abs(r["psnr"] - project.psnr(r["pixel_mse"])) < 1e-9 for r in records)


def latents_names(count: int) -> list[str]:
    return [f"{i}.png" for i in range(count)]


def test_a_killed_projection_resumes_from_the_next_image(drawn, tmp_path, monkeypatch):
    """Sixteen images in batches of eight (one a device): killed after the first batch, the
    run goes on with the second, and ends with the latents of an uninterrupted run."""
    root, _ = drawn
    (tmp_path / "photos").mkdir()
    for i in range(16):
        Image.open(root / "photos" / f"{i % 4}.png").save(tmp_path / "photos" / f"{i:02d}.png")
    fields = dict(images=str(tmp_path / "photos"), steps=50, batch_size=8)
    whole = projection_config(root, output=str(tmp_path / "whole"), **fields)
    project.project_images(whole, str(root / "run"))
    config = projection_config(root, output=str(tmp_path / "resumed"), **fields)
    checks = []

    def sigterm_after_one_batch():
        checks.append(1)
        return len(checks) == 2

    monkeypatch.setattr(project.interrupt, "requested", sigterm_after_one_batch)
    with pytest.raises(interrupt.Interrupted):
        project.project_images(config, str(root / "run"))
    records = tmp_path / "resumed" / project.RECORDS
    assert len(records.read_text().splitlines()) == 8
    with records.open("a") as file:
        file.write('{"name": "08.png", "pix')  # a line cut short by a kill
    monkeypatch.setattr(project.interrupt, "requested", lambda: checks.append(1) or False)
    project.project_images(config, str(root / "run"))
    assert len(checks) == 3  # one batch left
    names = [json.loads(line)["name"] for line in records.open()]
    assert names == [f"{i:02d}.png" for i in range(16)]
    changed = projection_config(root, output=str(tmp_path / "resumed"), **(fields | {"steps": 60}))
    with pytest.raises(ConfigError, match=r"other settings.*search"):
        project.project_images(changed, str(root / "run"))
    np.testing.assert_array_equal(
        np.load(tmp_path / "resumed" / "latents.npy"), np.load(tmp_path / "whole" / "latents.npy")
    )


@pytest.mark.parametrize(
    "problem",
    ["empty", "not_an_image", "grayscale", "gray_palette", "no_checkpoint", "no_inception_weights"],
)
def test_bad_input_is_named(drawn, tmp_path, problem):
    root, _ = drawn
    photos = tmp_path / "photos"
    photos.mkdir()
    workdir, fields = root / "run", {}
    if problem != "empty":
        Image.open(root / "photos" / "0.png").save(photos / "0.png")
    if problem == "not_an_image":
        (photos / "notes.txt").write_text("hello")
    if problem == "grayscale":
        Image.open(root / "photos" / "1.png").convert("L").save(photos / "gray.png")
    if problem == "gray_palette":  # a palette of grays, as many GIFs
        Image.open(root / "photos" / "1.png").convert("L").convert("P").save(photos / "gray.gif")
    if problem == "no_checkpoint":
        workdir = tmp_path / "untrained"
    if problem == "no_inception_weights":
        fields = {"perceptual_weight": 0.1}
    config = projection_config(tmp_path, **fields)
    expected = {
        "empty": (project.ProjectionInputError, "holds no images"),
        "not_an_image": (project.ProjectionInputError, "notes.txt is not an image"),
        "grayscale": (project.ProjectionInputError, "gray.png is grayscale"),
        "gray_palette": (project.ProjectionInputError, "gray.gif is grayscale"),
        "no_checkpoint": (MissingFileError, "No checkpoint"),
        "no_inception_weights": (Exception, "evals.fid_weights"),
    }[problem]
    with pytest.raises(expected[0], match=expected[1]):
        project.project_images(config, str(workdir))


@pytest.mark.slow  # Inception's compile
def test_hidden_files_and_folders_are_left_out(tmp_path):
    (tmp_path / ".ipynb_checkpoints").mkdir()
    for path in ("a.png", ".ipynb_checkpoints/a-checkpoint.png", ".b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / path)
    assert [p.name for p in project.image_paths(str(tmp_path))] == ["a.png"]


@pytest.mark.slow
def test_the_perceptual_distance_compares_inception_features():
    """Zero for the same images, positive for others, and a gradient for the search."""
    objective = project.Objective(0.0, 1.0, ("conv_4", "mixed_2"), resolution=75)
    images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1, maxval=1)
    params = inception.InceptionV3().init(jax.random.key(1), project.inception_input(images, 75))
    features = project.perceptual_features(params["params"], images, objective)
    assert [f.shape[-1] for f in features] == [192, 288]
    np.testing.assert_allclose(np.linalg.norm(features[0], axis=-1), 1.0, rtol=1e-5)
    same = project.perceptual_distance(features, features)
    np.testing.assert_allclose(same, 0.0, atol=1e-6)
    other = project.perceptual_features(params["params"], images[::-1], objective)
    assert (np.asarray(project.perceptual_distance(features, other)) > 1e-3).all()

    def distance(x):
        theirs = project.perceptual_features(params["params"], x, objective)
        return project.perceptual_distance(theirs, other).sum()

    assert np.abs(np.asarray(jax.grad(distance)(images))).max() > 0


@pytest.mark.slow
def test_main_projects_with_the_perceptual_term_and_walks_through_the_latents(
    drawn, tmp_path, compile_cache
):
    """Through main.py: a projection with the perceptual term (random Inception weights),
    then --mode=generate walking through the latents file it wrote."""
    from tests.runs import random_inception_weights, run

    root, _ = drawn
    random_inception_weights(tmp_path / "inception.npz")
    out = tmp_path / "projected"
    projected = run(
        root / "run",
        compile_cache,
        "--mode=project",
        f"--config.project.images={root / 'photos'}",
        f"--config.project.output={out}",
        f"--config.evals.fid_weights={tmp_path / 'inception.npz'}",
        "--config.project.perceptual_resolution=75",
        "--config.project.steps=2",  # Inception's backward pass, unoptimised (runs.env)
        "--config.project.restarts=1",
        "--config.project.batch_size=4",
    )
    assert projected.returncode == 0, projected.stderr[-3000:]
    summary = json.loads(projected.stdout.strip().splitlines()[-1])
    assert summary["images"] == 4 and summary["perceptual"] > 0
    walked = run(
        root / "run",
        compile_cache,
        "--mode=generate",
        f"--config.generate.latents={out / 'latents.npy'}",
        f"--config.generate.output={tmp_path / 'walk'}",
        "--config.generate.frames_per_keyframe=3",
    )
    assert walked.returncode == 0, walked.stderr[-3000:]
    with Image.open(tmp_path / "walk" / "interpolation.gif") as gif:
        assert gif.n_frames == 4 * 3


@pytest.mark.parametrize("kept_in", ["checkpoint", "classes_json"])
def test_subfolder_classes_are_numbered_as_the_run_numbered_them(tmp_path, kept_in):
    """With labels_from_subfolders, a subfolder's class id is its index among the run's
    classes (here not in sorted order), whether the checkpoint names them or an older
    workdir's classes.json does."""
    names = ["zebra", "apple", "mango"]
    classes = {"names": names, "shares": dict.fromkeys(names, 1 / 3)}
    workdir = tmp_path / "run"
    workdir.mkdir()
    if kept_in == "checkpoint":
        config = tiny.get_config()
        _, state = gan_lib.initialize(config, parallel.make_mesh())
        checkpointer = checkpointing.Checkpointer(workdir)
        networks = checkpointing.Networks.of(config, classes)
        checkpointer.save(state, checkpointing.Progress(8, 0, 2, 1.0), networks=networks)
        checkpointer.close()
    else:  # a workdir from before checkpoints kept their classes
        checkpointing.write_config(workdir, tiny.get_config())
        checkpointing.write_classes(workdir, classes)
    photos = tmp_path / "photos"
    files = []
    for name in ("apple", "zebra", "mango", "apple"):
        (photos / name).mkdir(parents=True, exist_ok=True)
        files.append(photos / name / f"{len(files)}.png")
    settings = tiny.get_config().project
    settings.labels_from_subfolders = True
    ids = project.image_labels(settings, files, photos, 3, str(workdir))
    np.testing.assert_array_equal(ids, [1, 0, 2, 1])
