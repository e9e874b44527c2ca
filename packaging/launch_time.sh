#!/usr/bin/env bash
# Time from launching the bundle to its main window being shown, under a virtual display.
#
#   packaging/launch_time.sh [EXECUTABLE] [RUNS] [SCREENSHOT.png]
#
# Each run starts the bundle with a fresh, empty data folder (a true first start: the medical
# notice comes up over the window) and polls X11 every 20 ms until a visible window titled
# "MedGemma Edge" exists. Prints each run and the median in seconds. With SCREENSHOT, the last run
# waits for the embedded model to load and saves the main window, first-start notice and all.
# Needs xvfb-run, xauth, xdotool and, for the screenshot, ImageMagick's import.
set -euo pipefail
cd "$(dirname "$0")/.."
EXE="$(realpath "${1:-dist/medgemma-desktop/medgemma-desktop}")"
RUNS="${2:-3}"
SHOT="${3:-}"
[ -x "$EXE" ] || { echo "launch_time: no bundle at $EXE (run make bundle)" >&2; exit 2; }
if [ -z "${DISPLAY:-}" ]; then
    exec xvfb-run -a -s "-screen 0 1600x1000x24" bash "$0" "$EXE" "$RUNS" "$SHOT"
fi

times=()
for run in $(seq "$RUNS"); do
    data="$(mktemp -d)"
    start=$(date +%s.%N)
    env -i DISPLAY="$DISPLAY" XAUTHORITY="${XAUTHORITY:-}" LANG=C.UTF-8 HOME="$data" MEDGEMMA_HOME="$data/medgemma" "$EXE" &
    pid=$!
    until xdotool search --onlyvisible --name '^MedGemma Edge$' >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || { echo "launch_time: the app exited before showing a window" >&2; exit 1; }
        sleep 0.02
    done
    end=$(date +%s.%N)
    seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
    times+=("$seconds")
    echo "run $run: window shown after ${seconds} s"
    if [ -n "$SHOT" ] && [ "$run" = "$RUNS" ]; then
        sleep 8  # the embedded model loads off the UI thread; the first-start notice stays up
        # The screen cut to the main window: the notice is a window of its own, drawn over it.
        eval "$(xdotool getwindowgeometry --shell "$(xdotool search --onlyvisible --name '^MedGemma Edge$' | head -1)")"
        import -window root -crop "${WIDTH}x${HEIGHT}+${X}+${Y}" +repage "$SHOT"
        echo "screenshot: $SHOT"
    fi
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    rm -rf "$data"
done
median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
echo "launch to window, median of $RUNS: ${median} s"
