"""Runs main.py with this process's monotonic clock running RATE times too fast.

    python tests/skewed_clock.py RATE --config ...   (the arguments of main.py)

Hosts' clocks drift and processes start at different moments; a decision taken from each
process's own clock (e.g. "30 minutes since the last checkpoint") then differs between them.
"""

import pathlib
import runpy
import sys
import time

rate = float(sys.argv.pop(1))
_real, _start = time.monotonic, time.monotonic()
time.monotonic = lambda: _start + (_real() - _start) * rate
main = pathlib.Path(__file__).resolve().parents[1] / "main.py"
sys.argv[0] = str(main)
sys.path.insert(0, str(main.parent))
runpy.run_path(str(main), run_name="__main__")
