#!/usr/bin/env bash
# Render packaging/icons/medgemma-edge.svg: hicolor PNGs into OUT/hicolor/<size>x<size>/apps/,
# and with --installers also the Windows .ico and macOS .icns kept beside the SVG, and the app's
# 256 px window icon (desktop/medgemma_desktop/ui/icons/).
# Needs rsvg-convert (Debian: librsvg2-bin) and, for --installers, ImageMagick's convert.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
svg="$here/icons/medgemma-edge.svg"
out="${1:?usage: render_icons.sh OUT [--installers]}"
for size in 16 22 24 32 48 64 128 256 512; do
    mkdir -p "$out/hicolor/${size}x${size}/apps"
    rsvg-convert -w "$size" -h "$size" "$svg" -o "$out/hicolor/${size}x${size}/apps/medgemma-edge.png"
done
mkdir -p "$out/hicolor/scalable/apps"
cp "$svg" "$out/hicolor/scalable/apps/medgemma-edge.svg"
if [ "${2:-}" = "--installers" ]; then
    png() { echo "$out/hicolor/$1x$1/apps/medgemma-edge.png"; }
    # The window icon, package data of the app (a PNG: the bundle leaves QtSvg out).
    cp "$(png 256)" "$here/../desktop/medgemma_desktop/ui/icons/medgemma-edge-256.png"
    convert "$(png 16)" "$(png 24)" "$(png 32)" "$(png 48)" "$(png 64)" "$(png 128)" "$(png 256)" "$here/icons/medgemma-edge.ico"
    rsvg-convert -w 1024 -h 1024 "$svg" -o "$out/icon-1024.png"
    # An .icns is a list of (type, length, PNG) records; macOS reads PNG payloads for these types.
    python3 - "$here/icons/medgemma-edge.icns" "$(png 128)" "$(png 256)" "$(png 512)" "$out/icon-1024.png" <<'PY'
import struct, sys
records = b""
for kind, path in zip((b"ic07", b"ic08", b"ic09", b"ic10"), sys.argv[2:]):
    data = open(path, "rb").read()
    records += kind + struct.pack(">I", len(data) + 8) + data
open(sys.argv[1], "wb").write(b"icns" + struct.pack(">I", len(records) + 8) + records)
PY
fi
