"""pytorch_GAN_zoo's PGAN checkpoints (its torch.hub `PGAN` models), as our networks.

A checkpoint is `torch.save` of `{'config', 'netG', 'netD', 'avgG'}`: a `BaseConfig` object
and three state dicts. Its networks are ProGAN with other conventions, each mapped here:

- every layer computes `c * (W x + b)` with `c = sqrt(2 / fan_in)` (gain sqrt(2) everywhere,
  the bias scaled too): the weights are stored here times `c / ours` and the biases times
  `c`, which computes the same function with our gains;
- G's first dense layer has one bias per unit (`model.dense_bias_per_unit`);
- the fade's alpha weights the old branch: ours is `1 - alpha`;
- minibatch stddev over groups of consecutive samples with the unbiased variance
  (`model.mbstd_consecutive`, `model.mbstd_unbiased`); the critic pools after the activation
  (`model.downsample_after_activation`);
- kernels are OIHW, `Linear` weights `[out, in]`, and the 4x4 maps flatten as NCHW.

Facts and their sources: docs/pretrained.md.
"""

import logging
import math
from typing import Any

import numpy as np

from progan_jax.nets import models
from progan_jax.nets.layers import SQRT2
from progan_jax.pretrained import safe_pickle
from progan_jax.pretrained.imported import (
    Imported,
    NamedArrays,
    UnsupportedNetworkError,
    inputs_to_nhwc,
    units_to_nhwc,
)
from progan_jax.runtime import paths, stages

_CONFIG_CLASS = ("models.utils.config", "BaseConfig")
_KEYS = ("config", "netG", "netD")


def is_torch_file(path: str) -> bool:
    """Whether `path` starts as one of torch's two formats (a zip, or its legacy magic)."""
    with paths.resolve(path).open("rb") as file:
        head = file.read(16)
    return head.startswith(safe_pickle.ZIP_MAGIC) or head.startswith(b"\x80\x02\x8a\x0a")


def _config(checkpoint: dict, path: str) -> dict[str, Any]:
    config = checkpoint["config"]
    fields = config.state if isinstance(config, safe_pickle.Stub) else config
    if not isinstance(fields, dict):
        raise UnsupportedNetworkError(f"{path}: its 'config' is not a PGAN config: {config!r}")
    return fields


def _field(config: dict, name: str, default: Any = None) -> Any:
    if name not in config and default is None:
        raise UnsupportedNetworkError(f"the checkpoint's config has no {name!r}")
    return config.get(name, default)


def _fmaps(depths: list[int]) -> tuple[int, int]:
    """(fmap_base, fmap_max) whose nf(s + 1) is the depth of scale s, and nf(0) that of the
    first (fmap_decay 1); UnsupportedNetworkError if there are none."""
    fmap_max = depths[0]
    narrower = [s for s, d in enumerate(depths) if d < fmap_max]
    fmap_base = (
        depths[narrower[0]] * 2 ** (narrower[0] + 1)
        if narrower
        else fmap_max * 2 ** (len(depths) + 1)
    )
    if [models.feature_maps(s, fmap_base, fmap_max) for s in range(1, len(depths) + 1)] != depths:
        raise UnsupportedNetworkError(
            f"depthScale0 and depthOtherScales {depths}: the networks here give stage s "
            "min(fmap_base / 2**s, fmap_max) feature maps, which no fmap_base and fmap_max make "
            "these"
        )
    return fmap_base, fmap_max


def model_fields(config: dict) -> dict[str, Any]:
    """Our `config.model` fields for a PGAN config; UnsupportedNetworkError naming a field
    the networks here cannot express."""
    if _field(config, "leakyReluLeak", 0.2) != 0.2:
        raise UnsupportedNetworkError(
            f"leakyReluLeak={config['leakyReluLeak']}: the networks here use a slope of 0.2"
        )
    if not _field(config, "perChannelNormalization", True):
        raise UnsupportedNetworkError(
            "perChannelNormalization=False: pytorch_GAN_zoo's G still normalises after its "
            "first layer then, which the networks here cannot express"
        )
    loss = _field(config, "lossCriterion", "WGANGP")
    if loss not in ("WGANGP", "Logistic"):
        raise UnsupportedNetworkError(
            f"lossCriterion={loss!r}: its G ends in tanh; the networks here have a linear output"
        )
    depths = [int(_field(config, "depthScale0"))] + [
        int(d) for d in _field(config, "depthOtherScales")
    ]
    fmap_base, fmap_max = _fmaps(depths)
    attributes = config.get("attribKeysOrder") or {}
    if len(attributes) > 1:
        raise UnsupportedNetworkError(
            f"attribKeysOrder has {len(attributes)} attributes ({', '.join(map(str, attributes))}"
            "): the networks here take one class label"
        )
    labels = int(_field(config, "categoryVectorDim", 0) or 0)
    latent = int(_field(config, "latentVectorDim")) - labels
    return dict(
        resolution=stages.stage_resolution(len(depths) - 1),
        num_channels=int(_field(config, "dimOutput", 3)),
        latent_size=latent,
        fmap_base=fmap_base,
        fmap_max=fmap_max,
        fmap_decay=1.0,
        normalize_latents=True,
        use_pixelnorm=True,
        pixelnorm_epsilon=1e-8,
        use_wscale=bool(_field(config, "equalizedlR", True)),
        mbstd_group_size=4 if _field(config, "miniBatchStdDev", False) else 0,
        mbstd_consecutive=True,
        mbstd_unbiased=True,
        dense_bias_per_unit=True,
        downsample_after_activation=True,
        label_size=labels,
        label_scale=1.0,
    )


class _StateDict:
    """A network's state dict, keys with or without `.module` (pytorch_GAN_zoo reads both)."""

    def __init__(self, tensors: dict, owner: str, equalized: bool):
        arrays = {key.replace(".module.", "."): value for key, value in tensors.items()}
        self.arrays, self.equalized = NamedArrays(arrays, owner), equalized

    def layer(self, name: str, our_gain: float, kernel=lambda w: w) -> dict:
        """Our {'kernel', 'bias'} of layer `name`, its He constant folded in (see above)."""
        weight, bias = self.arrays.take(f"{name}.weight"), self.arrays.take(f"{name}.bias")
        if self.equalized:
            fan_in = math.prod(weight.shape[1:])
            weight = weight * (SQRT2 / our_gain)
            bias = bias * math.sqrt(2.0 / fan_in)
        # OIHW -> HWIO; Linear's [out, in] -> [in, out]
        weight = weight.transpose(2, 3, 1, 0) if weight.ndim == 4 else weight.T
        return {"kernel": np.ascontiguousarray(kernel(weight)), "bias": bias}


def _generator(weights: _StateDict, last: int, channels: int) -> dict:
    dense = weights.layer("formatLayer", SQRT2 / 4, lambda w: units_to_nhwc(w, channels))
    dense["bias"] = dense["bias"].reshape(channels, 4, 4).transpose(1, 2, 0)  # one per unit
    params = {"dense_4x4": dense}
    params["conv_4x4"] = weights.layer("groupScale0.0", SQRT2)
    for stage in range(1, last + 1):
        r = stages.stage_resolution(stage)
        params[f"conv0_up_{r}x{r}"] = weights.layer(f"scaleLayers.{stage - 1}.0", SQRT2)
        params[f"conv1_{r}x{r}"] = weights.layer(f"scaleLayers.{stage - 1}.1", SQRT2)
    for stage in range(last + 1):
        r = stages.stage_resolution(stage)
        params[f"to_rgb_{r}x{r}"] = weights.layer(f"toRGBLayers.{stage}", 1.0)
    weights.arrays.check_all_used()
    return params


def _critic(weights: _StateDict, last: int, channels: int) -> dict:
    params = {}
    for stage in range(last + 1):
        r = stages.stage_resolution(stage)
        params[f"from_rgb_{r}x{r}"] = weights.layer(f"fromRGBLayers.{stage}", SQRT2)
        if stage:
            params[f"conv0_{r}x{r}"] = weights.layer(f"scaleLayers.{stage - 1}.0", SQRT2)
            params[f"conv1_down_{r}x{r}"] = weights.layer(f"scaleLayers.{stage - 1}.1", SQRT2)
    params["conv_4x4"] = weights.layer("groupScaleZero.0", SQRT2)
    params["dense0_4x4"] = weights.layer(
        "groupScaleZero.1", SQRT2, lambda w: inputs_to_nhwc(w, channels)
    )
    params["dense1_4x4"] = weights.layer("decisionLayer", 1.0)
    weights.arrays.check_all_used()
    return params


def read(path: str) -> Imported:
    """The networks of a PGAN checkpoint (avgG as G_ema)."""
    checkpoint = safe_pickle.load_torch(path, (_CONFIG_CLASS,))
    if not isinstance(checkpoint, dict):
        raise UnsupportedNetworkError(
            f"{path}: a pytorch_GAN_zoo checkpoint is a dict with {', '.join(_KEYS)}; this is "
            f"{type(checkpoint).__name__}"
        )
    missing = [key for key in _KEYS if key not in checkpoint]
    if missing:
        raise UnsupportedNetworkError(
            f"{path}: not a pytorch_GAN_zoo PGAN checkpoint: it lacks {', '.join(missing)} "
            f"(it has {', '.join(map(str, checkpoint))})"
        )
    config = _config(checkpoint, path)
    model = model_fields(config)
    last = stages.num_stages(model["resolution"]) - 1
    equalized = model["use_wscale"]
    depth0 = int(config["depthScale0"])
    ema = "avgG" if "avgG" in checkpoint else "netG"
    generator, critic, generator_ema = (
        _generator(_StateDict(checkpoint["netG"], f"{path}: netG", equalized), last, depth0),
        _critic(_StateDict(checkpoint["netD"], f"{path}: netD", equalized), last, depth0),
        _generator(_StateDict(checkpoint[ema], f"{path}: {ema}", equalized), last, depth0),
    )
    alpha = float(config.get("alpha", 0.0))
    details = {"gan_zoo_alpha": alpha, "generator_ema": ema}
    if last == 1 and alpha > 0:
        # pytorch_GAN_zoo's D blends its fade in only from the second added scale on.
        logging.warning("netD at 8x8 mid-fade: its scores differ from the imported critic's")
        details["critic"] = "differs: pytorch_GAN_zoo's D skips its fade with one added scale"
    if model["label_size"]:
        # pytorch_GAN_zoo reads the class logits from column 0, the score's column; ours
        # follow the score.
        details["critic_class_logits"] = "shifted by one: pytorch_GAN_zoo's start at column 0"
    return Imported(
        "pytorch_GAN_zoo",
        model,
        generator,
        critic,
        generator_ema,
        stage=last,
        alpha=1.0 - alpha,  # theirs weights the old branch
        details=details,
    )
