"""The paper-width train step compiled for a TPU slice from this machine: memory and FLOPs per
device, one JSON line per case (what `--mode=plan` prints for a stage).

    pip install -e '.[tpu]'   # libtpu; no TPU needed
    python benchmarks/plan_tpu.py                            # docs/performance.md's table, v5e:2x4
    python benchmarks/plan_tpu.py --topology v6e:2x2 --cases celeba_hq1024_8dev:8:16:bfloat16

A case is `config:stage:global batch:compute dtype`, with `:remat` for
`model.rematerialize=True`. Each compile takes minutes on a 2-core
machine (XLA's TPU compiler at paper widths); a case that does not fit prints XLA's
out-of-memory figure (`compile_error`) instead of the buffer sizes.
"""

import argparse
import importlib
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from progan_jax.training import plan  # noqa: E402

CASES = (
    "celeba128:5:64:float32",
    "celeba_hq1024_8dev:8:32:bfloat16",
    "celeba_hq1024_8dev:8:32:bfloat16:remat",
    "celeba_hq1024_8dev:8:32:float32",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", default="v5e:2x4")
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    target = plan.make_target(args.topology)
    devices = len(target.devices)
    for case in args.cases.split(","):
        name, stage, batch, dtype, *remat = case.split(":")
        config = importlib.import_module(f"configs.{name}").get_config()
        config.model.compute_dtype = dtype
        config.model.rematerialize = remat == ["remat"]
        compiled = plan.compile_step(config, target, int(stage), int(batch) // devices)
        line = plan.stage_report(config, target, int(stage), compiled)
        print(json.dumps({"config": name, "rematerialize": bool(remat), **line}), flush=True)


if __name__ == "__main__":
    main()
