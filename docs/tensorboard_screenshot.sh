#!/usr/bin/env bash
# Screenshots a run's TensorBoard scalars dashboard (as in docs/tensorboard.png).
#
# Starts TensorBoard on 127.0.0.1 only, at a free port, over PARENT (a folder holding one or
# more workdirs: TensorBoard names each run after its workdir, e.g. `demo` for workdir/demo),
# waits until it answers, takes a headless Chromium screenshot of the time-series dashboard
# (sections loss/, schedule/, speed/, metrics/ and the `samples` image), and stops TensorBoard
# on exit.
#
#   bash docs/tensorboard_screenshot.sh [PARENT] [OUT.png]     # defaults: workdir docs/tensorboard.png
#
# Needs `tensorboard` on the PATH (the project's environment) and Chromium (Debian:
# `apt-get install chromium`; CHROMIUM=/path/to/chrome picks another build). The picture in
# docs/ came from a short demo run:
#
#   python main.py --config configs/demo.py --workdir /tmp/tb_runs/demo \
#     --config.schedule.phase_images='(2000,2000,2000,2000)' \
#     --config.schedule.final_stabilize_images=2000 --config.logging.log_every_steps=10 \
#     --config.eval.swd_every_images=3000 --config.eval.swd_train_images=1024 \
#     --config.logging.sample_every_images=3000 --allow_cpu
#   bash docs/tensorboard_screenshot.sh /tmp/tb_runs docs/tensorboard.png
set -euo pipefail

parent="${1:-workdir}"
out="${2:-docs/tensorboard.png}"
fragment="${TB_FRAGMENT:-timeseries}"  # TensorBoard dashboard: timeseries, scalars, images...
budget_ms="${TB_RENDER_MS:-15000}"     # virtual time Chromium gives the page to load and draw
window="${TB_WINDOW:-1400,1000}"       # width,height of the picture in pixels

[[ -d "$parent" ]] || { echo "no such folder: $parent" >&2; exit 1; }
chromium="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}"
[[ -n "$chromium" ]] || { echo "Chromium not found (apt-get install chromium, or set CHROMIUM)" >&2; exit 1; }

# A free port on the loopback interface.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

log="$(mktemp)"
profile="$(mktemp -d)"
tensorboard --logdir "$parent" --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
tb_pid=$!
cleanup() {
  kill "$tb_pid" 2>/dev/null || true
  wait "$tb_pid" 2>/dev/null || true
  rm -rf "$log" "$profile"
}
trap cleanup EXIT

# Wait (at most 60 s) until TensorBoard answers and has loaded at least one run.
url="http://127.0.0.1:$port"
for _ in $(seq 120); do
  if ! kill -0 "$tb_pid" 2>/dev/null; then
    echo "TensorBoard exited:" >&2; cat "$log" >&2; exit 1
  fi
  runs="$(python3 -c 'import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1] + "/data/runs", timeout=2).read().decode())
except Exception:
    pass' "$url")"
  [[ -n "$runs" && "$runs" != "[]" ]] && break
  sleep 0.5
done
[[ -n "$runs" && "$runs" != "[]" ]] || { echo "TensorBoard found no runs under $parent:" >&2; cat "$log" >&2; exit 1; }
echo "TensorBoard at $url, runs: $runs"

mkdir -p "$(dirname "$out")"
"$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
  --window-size="$window" --virtual-time-budget="$budget_ms" \
  --screenshot="$(realpath -m "$out")" "$url/#$fragment" 2>/dev/null
echo "Wrote $out"
