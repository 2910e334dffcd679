"""An XProf trace of a few train steps, written where TensorBoard's profile plugin finds it.

    python main.py --config configs/demo.py --config.logging.profile_steps=5 \
        --config.logging.profile_stage=3
    tensorboard --logdir workdir/demo   # the Profile tab (pip install tensorboard-plugin-profile)

The trace starts at the second step of the stage, after the step's compilation (which would
otherwise fill it), and covers `profile_steps` steps. `jax.profiler` writes it under
`<workdir>/plugins/profile/<time>/`, the layout of TensorBoard's log directories.
"""

import logging

import jax
import ml_collections
from etils import epath


class StepTrace:
    """Starts and stops `jax.profiler`'s trace around steps of one stage, once per run."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: epath.Path):
        self.steps = config.profile_steps
        self.stage = config.profile_stage  # None: the first stage this run trains
        self.workdir = workdir
        self._seen = 0  # steps of the traced stage started so far
        self._active = False
        self._done = self.steps <= 0

    def before_step(self, stage: int, state) -> None:
        """Called before each step is dispatched, with the state it will consume."""
        if self._done:
            return
        if self.stage is None:
            self.stage = stage
        if stage != self.stage:
            if self._active:
                self.stop(state)
            return
        self._seen += 1
        if self._seen == 2:
            jax.block_until_ready(state)  # the trace holds only the traced steps
            jax.profiler.start_trace(str(self.workdir))
            self._active = True
            logging.info("Profiling %d steps of stage %d into %s.", self.steps, stage, self.workdir)
        elif self._seen == 2 + self.steps:
            self.stop(state)

    def stop(self, state=None) -> None:
        """Ends a trace in progress (after the dispatched steps have run); idempotent."""
        if self._active:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            logging.info("Profile written under %s.", self.workdir / "plugins" / "profile")
        self._active, self._done = False, True
