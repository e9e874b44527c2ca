#!/usr/bin/env bash
# macOS (Apple Silicon): "MedGemma Edge.app" with the Metal build of llama.cpp, in a DMG.
#   dist/MedGemma Edge.app
#   dist/medgemma-edge-VERSION-macos-arm64.dmg
# Parallel to packaging/build_linux.sh: same stage step, same spec. Not run by us (no Mac here).
# Before: `make install LLAMA_BACKEND=metal` (compiles llama-cpp-python with -DGGML_METAL=ON) and
# `.venv/bin/pip install -e '.[desktop,bundle]'`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"
VERSION="$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
STAGE="$PWD/build/bundle-stage"
APP="dist/MedGemma Edge.app"
DMG="dist/medgemma-edge-$VERSION-macos-$(uname -m).dmg"

"$PYTHON" -c 'import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else "llama-cpp-python is not the Metal build: make install LLAMA_BACKEND=metal")'
"$PYTHON" packaging/stage_bundle.py "$STAGE"
MEDGEMMA_BUNDLE_STAGE="$STAGE" MEDGEMMA_VERSION="$VERSION" "$PYTHON" -m PyInstaller --noconfirm --log-level WARN \
    --distpath dist --workpath build/pyinstaller packaging/medgemma-desktop.spec

# The DMG shows the app beside a link to /Applications, to drag it across.
rm -rf build/dmg && mkdir -p build/dmg
cp -R "$APP" build/dmg/
ln -s /Applications build/dmg/Applications
hdiutil create -volname "MedGemma Edge $VERSION" -srcfolder build/dmg -ov -format UDZO "$DMG.partial.dmg"
mv "$DMG.partial.dmg" "$DMG"

# The same check as the Linux test: the bundled executable loads the model and generates, offline.
env -i HOME="$(mktemp -d)" QT_QPA_PLATFORM=offscreen "$APP/Contents/MacOS/medgemma-desktop" --self-test --json
ls -l "$DMG"
