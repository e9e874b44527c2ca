#!/usr/bin/env bash
# `make bundle` on Linux: the one-folder bundle, a .tar.gz of it and a .deb, all in dist/.
#
#   dist/medgemma-desktop/                            the bundle (run dist/medgemma-desktop/medgemma-desktop)
#   dist/medgemma-edge-VERSION-linux-ARCH.tar.gz      the same folder as medgemma-edge-VERSION/
#   dist/medgemma-edge_VERSION_DEBARCH.deb            /opt/medgemma-edge, /usr/bin/medgemma-desktop, menu entry, icons
#
# Needs the project's .venv with PyInstaller (`pip install -e '.[desktop,bundle]'`), rsvg-convert
# (librsvg2-bin), dpkg-deb and dpkg-shlibdeps (dpkg-dev). No AppImage: appimagetool is in no registry
# this project can use (see packaging/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
VERSION="$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
ARCH="$(uname -m)"
DEB_ARCH="$(dpkg --print-architecture)"
STAGE="$PWD/build/bundle-stage"
BUNDLE=dist/medgemma-desktop
TARBALL="dist/medgemma-edge-$VERSION-linux-$ARCH.tar.gz"
DEB="dist/medgemma-edge_${VERSION}_${DEB_ARCH}.deb"

echo "== staging the model, terms and licenses into $STAGE"
"$PYTHON" packaging/stage_bundle.py "$STAGE"

echo "== PyInstaller: $BUNDLE"
MEDGEMMA_BUNDLE_STAGE="$STAGE" MEDGEMMA_VERSION="$VERSION" "$PYTHON" -m PyInstaller --noconfirm --log-level WARN \
    --distpath dist --workpath build/pyinstaller packaging/medgemma-desktop.spec
# Only libpython is stripped: wheel libraries edited by auditwheel (numpy's OpenBLAS) break when stripped.
for lib in "$BUNDLE"/_internal/libpython3*.so*; do
    [ -L "$lib" ] || strip --strip-debug "$lib"
done

echo "== $TARBALL"
# Level 1: the quantized model (most of the bytes) hardly compresses at any level.
tar --create --use-compress-program "gzip -1" --file "$TARBALL.partial" --owner=0 --group=0 --sort=name \
    --directory dist --transform "s,^medgemma-desktop,medgemma-edge-$VERSION," medgemma-desktop
mv "$TARBALL.partial" "$TARBALL"

echo "== $DEB"
ROOT=build/deb-root
rm -rf "$ROOT"
mkdir -p "$ROOT/DEBIAN" "$ROOT/opt" "$ROOT/usr/bin" "$ROOT/usr/share/applications" "$ROOT/usr/share/doc/medgemma-edge"
cp -a "$BUNDLE" "$ROOT/opt/medgemma-edge"
# Relative, so the launcher also works in a tree unpacked with `dpkg -x` into any folder.
ln -s ../../opt/medgemma-edge/medgemma-desktop "$ROOT/usr/bin/medgemma-desktop"
install -m 0644 packaging/linux/medgemma-edge.desktop "$ROOT/usr/share/applications/medgemma-edge.desktop"
packaging/render_icons.sh "$ROOT/usr/share/icons"
{
    echo "MedGemma Edge $VERSION: Apache-2.0 (/opt/medgemma-edge/_internal/licenses/medgemma-edge-LICENSE.txt)."
    echo "Bundled third-party software: /opt/medgemma-edge/_internal/licenses/THIRD-PARTY.txt."
    echo "The bundled Gemma 3 270M model is used under the Gemma Terms of Use:"
    echo "/opt/medgemma-edge/_internal/models/GEMMA_TERMS.txt."
} > "$ROOT/usr/share/doc/medgemma-edge/copyright"
chmod -R u=rwX,go=rX "$ROOT"

# System libraries the bundle links against and does not carry (libc, libGL, …), as Debian packages.
# Qt's Wayland plugins are left out of that: a Wayland session has libwayland-*, and elsewhere
# Qt uses X11 (xcb, whose libraries the bundle carries).
SHLIBS=build/shlibdeps
rm -rf "$SHLIBS" && mkdir -p "$SHLIBS/debian"
printf 'Source: medgemma-edge\n\nPackage: medgemma-edge\nArchitecture: any\n' > "$SHLIBS/debian/control"
mapfile -t elves < <(find "$ROOT/opt/medgemma-edge" -type f \( -name '*.so*' -o -name medgemma-desktop \) -exec sh -c \
    'head -c 4 "$1" | grep -q "ELF" && echo "$(realpath "$1")"' _ {} \; | grep -viE 'wayland|WlShell')
mapfile -t libdirs < <(find "$(realpath "$ROOT/opt/medgemma-edge")" -type d -printf '-l%p\n')
# The bundle carries copies of many system libraries (libX11, libxcb-cursor, libstdc++, …): the
# packages that own those copies on the build machine are not dependencies.
mapfile -t carried < <(find "$ROOT/opt/medgemma-edge/_internal" -maxdepth 1 -name 'lib*.so*' -printf '*/%f\n')
mapfile -t excluded < <(dpkg -S "${carried[@]}" 2>/dev/null | cut -d: -f1 | sort -u | sed 's/^/-x/')
DEPENDS="$(cd "$SHLIBS" && dpkg-shlibdeps -O --ignore-missing-info "${excluded[@]}" "${libdirs[@]}" "${elves[@]}" \
    2>/dev/null | sed -n 's/^shlibs:Depends=//p')"
cat > "$ROOT/DEBIAN/control" <<EOF
Package: medgemma-edge
Version: $VERSION
Architecture: $DEB_ARCH
Maintainer: MedGemma Edge <dev@medgemma-edge.invalid>
Installed-Size: $(du -sk "$ROOT/opt" "$ROOT/usr" | awk '{s += $1} END {print s}')
Depends: $DEPENDS
Recommends: libwayland-client0, libwayland-cursor0, libwayland-egl1
Section: science
Priority: optional
Description: offline chat with medical Gemma models (not for clinical use)
 A desktop chat app that runs medical Gemma GGUF models through llama.cpp on
 this computer, with no network connection. It carries its own Python, Qt and
 llama.cpp, and the Gemma 3 270M model as the embedded default.
 .
 The models it runs are small research models: nothing they say is medical
 advice, a diagnosis or a treatment decision.
EOF
dpkg-deb --root-owner-group -Zgzip -z1 --build "$ROOT" "$DEB.partial" >/dev/null
mv "$DEB.partial" "$DEB"

echo "== done"
echo "bundle without the model: $(du -sh --exclude=models "$BUNDLE" | cut -f1); with it: $(du -sh "$BUNDLE" | cut -f1)"
ls -l "$TARBALL" "$DEB"
