"""The config summary (progan_jax.modes.summary): the JSON lines of `--mode=summary`."""

import json

from progan_jax.modes import summary
from progan_jax.training import schedule


def test_summary_json_gives_the_schedule_total(tiny_config):
    last = list(summary.summarize(tiny_config))[-1]
    counts = json.loads(last)
    # Three stages: stabilize 64, then fade 64 + stabilize 64 twice.
    assert (
        counts["total_images"]
        == 64 + 2 * (64 + 64)
        == schedule.Schedule.from_config(tiny_config).total_images
    )
    assert counts["generator_params"] > 0 and counts["critic_params"] > 0
