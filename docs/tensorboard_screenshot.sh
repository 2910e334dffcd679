#!/usr/bin/env bash
# Screenshots a run's TensorBoard scalars dashboard, every section open (docs/tensorboard.png).
#
#   bash docs/tensorboard_screenshot.sh [PARENT] [OUT.png]
#
# (defaults: PARENT workdir, OUT.png docs/tensorboard.png).
#
# PARENT is a folder of workdirs: TensorBoard names each run after its workdir (`demo` for
# workdir/demo). The script starts TensorBoard on 127.0.0.1 only, at a free port, waits until
# it lists a run, opens http://127.0.0.1:PORT/#scalars (the scalars dashboard) in headless
# Chromium, opens every section (loss/, metrics/, schedule/, speed/; the dashboard itself opens
# only the first two), waits until every chart has its data, and saves the whole dashboard as
# one PNG. TensorBoard and Chromium stop when the script exits.
#
# Needs `tensorboard` on the PATH (the project's environment), python3, and Chromium (Debian:
# `apt-get install chromium`; CHROMIUM=/path/to/chrome picks another build). Settings:
#   TB_WIDTH            picture width in pixels (default 1800: four charts a row); the height
#                       follows the dashboard
#   TB_SMOOTHING        the dashboard's smoothing (default 0: the logged values; TensorBoard's
#                       own 0.6 turns the schedule's staircases into ramps)
#   TB_IGNORE_OUTLIERS  1 keeps TensorBoard's "Ignore outliers in chart scaling" (default 0:
#                       off; it drops each chart's top and bottom 5% of values, which clips a
#                       chart of a few SWD points and leaves one of two points empty)
# Chromium is driven over its DevTools pipe (--remote-debugging-pipe, Python's standard library
# only) because a plain `chromium --headless --screenshot` can neither open the collapsed
# sections nor wait for the charts' data.
#
# docs/tensorboard.png came from a short demo run (about 13 minutes on 2 CPU cores):
#
#   python main.py --config configs/demo.py --workdir /tmp/tb_demo/demo \
#     --config.schedule.phase_images='(2000,2000,2000,2000)' \
#     --config.schedule.final_stabilize_images=2000 --config.logging.log_every_steps=10 \
#     --config.evals.swd.every_images=1000 --config.evals.swd.images=1024 \
#     --config.logging.sample_every_images=2000 --allow_cpu
#   bash docs/tensorboard_screenshot.sh /tmp/tb_demo docs/tensorboard.png
set -euo pipefail

parent="${1:-workdir}"
out="${2:-docs/tensorboard.png}"
width="${TB_WIDTH:-1800}"
smoothing="${TB_SMOOTHING:-0}"
outliers="${TB_IGNORE_OUTLIERS:-0}"

fail() { echo "$*" >&2; exit 1; }
[[ -d "$parent" ]] || fail "no such folder: $parent"
command -v tensorboard >/dev/null || fail "tensorboard not found: activate the project's venv"
chromium="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
[[ -n "$chromium" ]] || fail "Chromium not found (apt-get install chromium, or set CHROMIUM)"

# A free port on the loopback interface.
port="$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')"

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

# Wait (at most 90 s) until TensorBoard answers and has found at least one run.
url="http://127.0.0.1:$port"
runs=""
for _ in $(seq 180); do
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
[[ -n "$runs" && "$runs" != "[]" ]] || fail "TensorBoard found no runs under $parent: $(cat "$log")"
echo "TensorBoard at $url, runs: $runs"

mkdir -p "$(dirname "$out")"
python3 - "$chromium" "$url/#scalars&_smoothingWeight=$smoothing" "$out" "$width" "$profile" "$outliers" <<'PY'
"""Drives headless Chromium over --remote-debugging-pipe (fd 3: commands in, fd 4: replies out;
JSON messages ended by NUL) and saves the scalars dashboard with every section open."""
import base64, fcntl, json, os, subprocess, sys, time

chromium, url, out, width, profile, ignore_outliers = sys.argv[1:7]
ignore_outliers = ignore_outliers == "1"
width, first_height = int(width), 1000

commands_r, commands_w = os.pipe()
replies_r, replies_w = os.pipe()
child_in = fcntl.fcntl(commands_r, fcntl.F_DUPFD, 10)  # above 4, so the dup2s below cannot clash
child_out = fcntl.fcntl(replies_w, fcntl.F_DUPFD, 10)


def as_fds_3_and_4():
    os.dup2(child_in, 3)
    os.dup2(child_out, 4)


browser = subprocess.Popen(
    [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
     f"--user-data-dir={profile}", "--remote-debugging-pipe",
     f"--window-size={width},{first_height}", "about:blank"],
    preexec_fn=as_fds_3_and_4, pass_fds=(3, 4),
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)  # fmt: skip
for fd in (commands_r, replies_w, child_in, child_out):
    os.close(fd)
pending, last_id = b"", 0


def call(method, params=None, session=None):
    global pending, last_id
    last_id += 1
    message = {"id": last_id, "method": method, "params": params or {}}
    if session:
        message["sessionId"] = session
    os.write(commands_w, json.dumps(message).encode() + b"\0")
    while True:  # skip events until the reply
        while b"\0" not in pending:
            chunk = os.read(replies_r, 1 << 20)
            if not chunk:
                sys.exit("Chromium closed its DevTools pipe")
            pending += chunk
        raw, pending = pending.split(b"\0", 1)
        reply = json.loads(raw)
        if reply.get("id") == last_id:
            if "error" in reply:
                sys.exit(f"{method}: {reply['error']}")
            return reply["result"]


def wait_for(what, check, seconds=90):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    sys.exit(f"gave up after {seconds} s waiting for {what}")


try:
    page = wait_for("a page", lambda: next(
        (t["targetId"] for t in call("Target.getTargets")["targetInfos"] if t["type"] == "page"),
        None))  # fmt: skip
    session = call("Target.attachToTarget", {"targetId": page, "flatten": True})["sessionId"]

    def js(expression):
        result = call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                      session)  # fmt: skip
        if "exceptionDetails" in result:
            sys.exit(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def resize(height):
        call("Emulation.setDeviceMetricsOverride",
             {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)

    resize(first_height)
    call("Page.navigate", {"url": url}, session)
    # The dashboards are Polymer elements: look inside every shadow root.
    helpers = """
      function deepAll(selector, root = document, found = []) {
        for (const el of root.querySelectorAll('*')) {
          if (el.matches(selector)) found.push(el);
          if (el.shadowRoot) deepAll(selector, el.shadowRoot, found);
        }
        return found;
      }
      function sections() {
        return deepAll('tf-category-paginated-view').filter(v => v.category && v.category.name);
      }
      function loaders() {
        return deepAll('*').filter(el => 'dataLoadedAtLeastOnce' in el && el.isConnected);
      }
      function center() {
        return deepAll('tf-scalar-dashboard')[0].shadowRoot.querySelector('[slot="center"]')
            || deepAll('[slot="center"]')[0];
      }
    """
    wait_for("the scalars dashboard's sections",
             lambda: js(helpers + "sections().length > 0 && loaders().length > 0"))
    js(helpers + "sections().forEach(v => { v.opened = true; }); true")
    if not ignore_outliers:  # a browser setting (local storage), not in the URL: untick it
        js(helpers + "deepAll('tf-scalar-dashboard')[0]._ignoreYOutliers = false; true")
    for _ in range(3):  # grow the window to the dashboard's height; new charts load as they show
        wait_for("the charts' data", lambda: js(helpers + """
            loaders().length > 0 && loaders().every(l => l.dataLoadedAtLeastOnce && !l.dataLoading)
        """))  # fmt: skip
        height = js(helpers + """
            (() => {
              const c = center();
              return Math.ceil(c.getBoundingClientRect().top + c.scrollHeight);
            })()
        """)  # fmt: skip
        resize(max(height, first_height))
        time.sleep(1.0)  # let the charts redraw at the new size
        if js(helpers + "center().scrollHeight <= center().clientHeight + 1"):
            break
    shot = call("Page.captureScreenshot", {"format": "png"}, session)
    with open(out, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    print(f"Wrote {out} ({width}x{max(height, first_height)})")
finally:
    try:
        call("Browser.close")
    except (SystemExit, OSError):
        pass
    try:
        browser.wait(timeout=10)
    except subprocess.TimeoutExpired:
        browser.kill()
PY
