"""The official ProGAN network pickles, as our networks' parameters and `config.model` fields.

Two formats hold the official networks, each a pickled tuple `(G, D, Gs)`:

- `tfutil.Network` version 2, what the official TensorFlow code saves (`network-final.pkl`,
  `network-snapshot-*.pkl`): `static_kwargs` (the arguments of `G_paper` / `D_paper`) and
  `variables`, a list of (name, array) such as `4x4/Dense/weight` or `ToRGB_lod0/bias`.
- The Theano-era format of the published `karras2018iclr-*.pkl` files (module `network`,
  class `Network`): `build_func_spec` (the arguments, with `func`), `param_values` (arrays in
  a fixed order, Theano layouts, a scale per layer for equalized LR) and
  `toplevel_params['cur_lod']`. `_from_theano` turns it into the version-2 form, following
  the layout facts of the official loader; docs/pretrained.md lists them.

`OfficialNetwork` is one network in the version-2 form; `generator_params` and
`critic_params` map its variables onto our parameter tree (docs/pretrained.md has the table).
"""

import dataclasses
import logging
import math
from typing import Any

import numpy as np

from progan_jax.nets import models
from progan_jax.pretrained import safe_pickle
from progan_jax.pretrained.imported import (
    Imported,
    NamedArrays,
    UnsupportedNetworkError,
    inputs_to_nhwc,
    units_to_nhwc,
)
from progan_jax.runtime import paths, stages


@dataclasses.dataclass(frozen=True)
class OfficialNetwork:
    """One official network: its build function, arguments, variables and level of detail."""

    func: str  # 'G_paper' or 'D_paper'
    kwargs: dict[str, Any]
    variables: NamedArrays
    lod: float


# The official build functions' defaults (networks.py:144-163 and 234-248): a file's
# `static_kwargs` hold only what its run set.
_SHARED_DEFAULTS = dict(
    num_channels=1,
    resolution=32,
    label_size=0,
    fmap_base=8192,
    fmap_decay=1.0,
    fmap_max=512,
    use_wscale=True,
    dtype="float32",
    fused_scale=True,
    structure=None,
)
G_DEFAULTS = dict(
    _SHARED_DEFAULTS,
    latent_size=None,
    normalize_latents=True,
    use_pixelnorm=True,
    pixelnorm_epsilon=1e-8,
    use_leakyrelu=True,
)
D_DEFAULTS = dict(_SHARED_DEFAULTS, mbstd_group_size=4)
_BUILD_FUNCS = {"G_paper": G_DEFAULTS, "D_paper": D_DEFAULTS}
# Arguments that change how the official graph is built, not what it computes.
_NO_EFFECT = ("dtype", "structure", "is_template_graph")

# Theano-era build functions and what the official loader builds them as (legacy.py:32-36).
_THEANO_FUNCS = {
    "G_paper": "G_paper",
    "G_progressive_8": "G_paper",
    "D_paper": "D_paper",
    "D_progressive_8": "D_paper",
}
# Theano arguments the TF networks have no counterpart for, and the value they must have
# (legacy.py:48-55); `use_gdrop` made no difference and is dropped.
_THEANO_REQUIRED = {
    "label_size": 0,
    "use_batchnorm": False,
    "tanh_at_end": None,
    "mbstat_func": "Tstdeps",
    "mbstat_avg": "all",
    "mbdisc_kernels": None,
    "use_layernorm": False,
}
_STUBS = (("tfutil", "Network"), ("network", "Network"))


def read_networks(path: str) -> tuple[OfficialNetwork, OfficialNetwork, OfficialNetwork]:
    """(G, D, Gs) of an official network pickle, in either format, without running its code."""
    with paths.resolve(path).open("rb") as file:
        loaded = safe_pickle.load(file, _STUBS, what=path)
    if not (isinstance(loaded, tuple) and len(loaded) == 3):
        raise UnsupportedNetworkError(
            f"{path}: an official network pickle holds a tuple (G, D, Gs); this one holds "
            f"{type(loaded).__name__}"
        )
    networks = tuple(_network(item, path) for item in loaded)
    expected = ("G_paper", "D_paper", "G_paper")
    for role, network, func in zip(("G", "D", "Gs"), networks, expected, strict=True):
        if network.func != func:
            raise UnsupportedNetworkError(
                f"{path}: its {role} is built by {network.func!r}, not the ProGAN {func!r}; "
                "only ProGAN networks can be imported (a StyleGAN file, for one, is not)."
            )
    return networks


def _network(item: Any, path: str) -> OfficialNetwork:
    state = getattr(item, "state", None)
    if not isinstance(item, safe_pickle.Stub) or not isinstance(state, dict):
        raise UnsupportedNetworkError(
            f"{path}: expected official Network objects, found {type(item).__name__}"
        )
    if state.get("version") == 2:
        func = state.get("build_func_name")
        variables = dict(state.get("variables", ()))
        lod = np.asarray(variables.pop("lod", 0.0)).item()
        arrays = NamedArrays(variables, f"{path}: {func}")
        return OfficialNetwork(func, dict(state.get("static_kwargs", {})), arrays, lod)
    if "build_func_spec" in state:
        return _from_theano(state, path)
    raise UnsupportedNetworkError(
        f"{path}: a Network of unknown version {state.get('version')!r} (keys {sorted(state)})"
    )


def _from_theano(state: dict, path: str) -> OfficialNetwork:
    """A Theano-era network in the version-2 form (the official legacy.py:38-94)."""
    spec = dict(state["build_func_spec"])
    theano_func = spec.pop("func", None)
    if theano_func not in _THEANO_FUNCS:
        raise UnsupportedNetworkError(
            f"{path}: the Theano network {theano_func!r} is not a ProGAN generator or critic "
            f"({', '.join(_THEANO_FUNCS)})"
        )
    for name, required in _THEANO_REQUIRED.items():
        value = spec.pop(name, required)
        if value != required:
            raise UnsupportedNetworkError(
                f"{path}: {theano_func} argument {name}={value!r} has no counterpart in the "
                f"official TF networks or here (it must be {required!r})"
            )
    spec.pop("use_gdrop", None)
    spec["fused_scale"] = False  # the Theano networks resampled separately
    spec["mbstd_group_size"] = 16
    resolution_log2 = int(np.log2(spec.get("resolution", 32)))
    use_wscale = spec.get("use_wscale", True)
    params = iter(state["param_values"])
    variables: dict[str, np.ndarray] = {}

    def conv(w: np.ndarray) -> np.ndarray:  # OIHW, a true convolution -> HWIO correlation
        return w.transpose(2, 3, 1, 0)[::-1, ::-1]

    def layer(name: str, gain: float, weight: np.ndarray) -> None:
        weight = np.asarray(weight, np.float32)
        if use_wscale:
            # Theano kept the weight and its scale apart: the TF layer multiplies its weight by
            # He's constant at run time, so it stores weight * scale / constant.
            scale = np.float32(next(params))
            weight = weight * scale / (gain / math.sqrt(np.prod(weight.shape[:-1])))
        variables[f"{name}/weight"] = weight.astype(np.float32)
        variables[f"{name}/bias"] = np.asarray(next(params), np.float32)

    relu, linear = math.sqrt(2), 1.0
    try:
        if theano_func.startswith("G"):
            dense = next(params)
            layer("4x4/Dense", relu / 4, dense.transpose(1, 0, 2, 3).reshape(dense.shape[1], -1))
            layer("4x4/Conv", relu, conv(next(params)))
            for res in range(3, resolution_log2 + 1):
                layer(f"{2**res}x{2**res}/Conv0", relu, conv(next(params)))
                layer(f"{2**res}x{2**res}/Conv1", relu, conv(next(params)))
            for lod in range(resolution_log2 - 1):
                layer(f"ToRGB_lod{lod}", linear, next(params)[np.newaxis, np.newaxis])
        else:
            layer("FromRGB_lod0", relu, next(params)[np.newaxis, np.newaxis])
            for res in range(resolution_log2, 2, -1):
                layer(f"{2**res}x{2**res}/Conv0", relu, conv(next(params)))
                layer(f"{2**res}x{2**res}/Conv1", relu, conv(next(params)))
                layer(
                    f"FromRGB_lod{resolution_log2 - res + 1}",
                    relu,
                    next(params)[np.newaxis, np.newaxis],
                )
            layer("4x4/Conv", relu, conv(next(params)))
            dense0 = next(params)[:, :, ::-1, ::-1]  # a 4x4 'valid' convolution, flipped
            layer("4x4/Dense0", relu, dense0.reshape(dense0.shape[0], -1).T)
            layer("4x4/Dense1", linear, next(params))
    except StopIteration as error:
        raise UnsupportedNetworkError(
            f"{path}: the Theano {theano_func} holds fewer parameters than a network of "
            f"resolution {2**resolution_log2} needs"
        ) from error
    left = sum(1 for _ in params)
    if left:
        raise UnsupportedNetworkError(
            f"{path}: the Theano {theano_func} holds {left} parameter(s) more than a network "
            f"of resolution {2**resolution_log2} needs"
        )
    lod = np.asarray(state.get("toplevel_params", {}).get("cur_lod", 0.0)).item()
    func = _THEANO_FUNCS[theano_func]
    return OfficialNetwork(func, spec, NamedArrays(variables, f"{path}: {func}"), lod)


# ---------------------------------------------------------------------------- model fields


def _arguments(network: OfficialNetwork) -> dict[str, Any]:
    """The network's build arguments with the official defaults filled in; unknown ones (the
    official functions ignore them) are logged and dropped."""
    defaults = _BUILD_FUNCS[network.func]
    known = set(G_DEFAULTS) | set(D_DEFAULTS) | set(_NO_EFFECT)  # one spec may serve both
    unknown = sorted(set(network.kwargs) - known)
    if unknown:
        logging.warning(
            "%s: ignoring arguments the official network ignores too: %s",
            network.func,
            ", ".join(f"{k}={network.kwargs[k]!r}" for k in unknown),
        )
    return {**defaults, **{k: v for k, v in network.kwargs.items() if k in defaults}}


def model_fields(generator: OfficialNetwork, critic: OfficialNetwork) -> dict[str, Any]:
    """The `config.model` fields of our networks that compute what (G, D) compute.

    Raises UnsupportedNetworkError naming an argument our networks cannot express, or one on
    which G and D disagree where ours share a field.
    """
    g, d = _arguments(generator), _arguments(critic)
    if not g["use_leakyrelu"]:
        raise UnsupportedNetworkError(
            "G_paper argument use_leakyrelu=False (ReLU): the networks here use leaky ReLU "
            "(slope 0.2) only"
        )
    for name in (
        "num_channels",
        "resolution",
        "fmap_base",
        "fmap_decay",
        "fmap_max",
        "use_wscale",
        "label_size",
    ):
        if g[name] != d[name]:
            raise UnsupportedNetworkError(
                f"argument {name}: G has {g[name]!r} and D {d[name]!r}; the networks here "
                "share one value"
            )
    resolution = int(g["resolution"])
    if resolution < 4 or resolution & (resolution - 1):
        raise UnsupportedNetworkError(f"argument resolution={resolution}: not a power of two >= 4")

    latent_size = g["latent_size"]
    if latent_size is None:  # the official default, nf(0)
        latent_size = models.feature_maps(0, g["fmap_base"], g["fmap_max"], g["fmap_decay"])
    return dict(
        resolution=resolution,
        num_channels=int(g["num_channels"]),
        latent_size=int(latent_size),
        fmap_base=int(g["fmap_base"]),
        fmap_max=int(g["fmap_max"]),
        fmap_decay=float(g["fmap_decay"]),
        normalize_latents=bool(g["normalize_latents"]),
        use_pixelnorm=bool(g["use_pixelnorm"]),
        pixelnorm_epsilon=float(g["pixelnorm_epsilon"]),
        use_wscale=bool(g["use_wscale"]),
        mbstd_group_size=int(d["mbstd_group_size"]),
        label_size=int(g["label_size"]),
        label_scale=1.0,  # the official networks join the one-hot labels as they are
        fused_scale=bool(g["fused_scale"]),
        # The official minibatch stddev (strided groups, biased variance) and dense layer
        # (one bias per map), whatever the import's config says.
        mbstd_consecutive=False,
        mbstd_unbiased=False,
        dense_bias_per_unit=False,
        # The official separate resampling pools after the activation (networks.py:273-275);
        # the fused convolution pools before it (networks.py:270-271).
        downsample_after_activation=not d["fused_scale"],
    )


def stage_and_alpha(lod: float, resolution: int) -> tuple[int, float]:
    """Our (stage, alpha) of the official level of detail `lod`.

    lod counts halvings below the full resolution: lod 0 is the last stage at alpha 1, and lod
    1.25 the stage below it with its newest layers 0.75 faded in (alpha = 1 - frac(lod)). The
    official G then repeats each pixel 2**floor(lod) times in each direction to output the
    full resolution; ours returns the stage's own resolution.
    """
    last = stages.num_stages(resolution) - 1
    if not 0.0 <= lod <= last:
        raise UnsupportedNetworkError(
            f"lod {lod} is outside [0, {last}] for a {resolution}x{resolution} network"
        )
    whole = math.floor(lod)
    return last - whole, 1.0 - (lod - whole)


# -------------------------------------------------------------------------- parameter trees


def _transposed_to_conv(weight: np.ndarray) -> np.ndarray:
    """A fused up-convolution's kernel, stored `[k, k, out, in]` for `conv2d_transpose`, as
    the kernel of a convolution over the upsampled input: rotated 180 degrees, in and out
    swapped."""
    return weight[::-1, ::-1].transpose(0, 1, 3, 2)


def _layer(variables: NamedArrays, name: str, weight: np.ndarray | None = None) -> dict:
    kernel = variables.take(f"{name}/weight") if weight is None else weight
    return {"kernel": np.ascontiguousarray(kernel), "bias": variables.take(f"{name}/bias")}


def generator_params(network: OfficialNetwork, resolution: int) -> dict:
    """Our Generator's parameter tree of an official G (G_paper)."""
    variables = network.variables
    dense = variables.take("4x4/Dense/weight")
    channels = variables.take("4x4/Dense/bias").shape[0]
    params = {"dense_4x4": _layer(variables, "4x4/Dense", units_to_nhwc(dense, channels))}
    params["conv_4x4"] = _layer(variables, "4x4/Conv")
    last = stages.num_stages(resolution) - 1
    for stage in range(1, last + 1):
        r = stages.stage_resolution(stage)
        if f"{r}x{r}/Conv0_up/weight" in variables:
            up = _transposed_to_conv(variables.take(f"{r}x{r}/Conv0_up/weight"))
            params[f"conv0_up_{r}x{r}"] = _layer(variables, f"{r}x{r}/Conv0_up", up)
        else:
            params[f"conv0_up_{r}x{r}"] = _layer(variables, f"{r}x{r}/Conv0")
        params[f"conv1_{r}x{r}"] = _layer(variables, f"{r}x{r}/Conv1")
    for stage in range(last + 1):
        r = stages.stage_resolution(stage)
        params[f"to_rgb_{r}x{r}"] = _layer(variables, f"ToRGB_lod{last - stage}")
    return params


def critic_params(network: OfficialNetwork, resolution: int) -> dict:
    """Our Critic's parameter tree of an official D (D_paper)."""
    variables, params = network.variables, {}
    last = stages.num_stages(resolution) - 1
    for stage in range(last + 1):
        r = stages.stage_resolution(stage)
        params[f"from_rgb_{r}x{r}"] = _layer(variables, f"FromRGB_lod{last - stage}")
        if stage == 0:
            continue
        params[f"conv0_{r}x{r}"] = _layer(variables, f"{r}x{r}/Conv0")
        fused = f"{r}x{r}/Conv1_down/weight" in variables
        params[f"conv1_down_{r}x{r}"] = _layer(
            variables, f"{r}x{r}/Conv1_down" if fused else f"{r}x{r}/Conv1"
        )
    params["conv_4x4"] = _layer(variables, "4x4/Conv")
    dense0 = variables.take("4x4/Dense0/weight")
    channels = variables.take("4x4/Conv/bias").shape[0]
    params["dense0_4x4"] = _layer(variables, "4x4/Dense0", inputs_to_nhwc(dense0, channels))
    params["dense1_4x4"] = _layer(variables, "4x4/Dense1")
    return params


def read(path: str) -> Imported:
    """The networks of an official pickle (either format), G_ema = its Gs."""
    generator, critic, generator_ema = read_networks(path)
    model = model_fields(generator, critic)
    resolution = model["resolution"]
    trees = (
        generator_params(generator, resolution),
        critic_params(critic, resolution),
        generator_params(generator_ema, resolution),
    )
    for network in (generator, critic, generator_ema):
        network.variables.check_all_used()
    stage, alpha = stage_and_alpha(generator_ema.lod, resolution)
    arguments = {k: repr(v) for k, v in sorted(generator.kwargs.items())}
    return Imported(
        "official", model, *trees, stage, alpha, {"lod": generator_ema.lod, "arguments": arguments}
    )
