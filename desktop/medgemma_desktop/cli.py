"""`medgemma-desktop`: the chat app, or `--self-test` for a check with no window."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

from medgemma_models.errors import MedGemmaError


def parse_gpu(value: str) -> str | int:
    if value in ("auto", "cpu"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("use auto, cpu or a number of layers") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medgemma-desktop",
        description="Offline chat with medical Gemma GGUF models. Not for clinical use.",
    )
    parser.add_argument("--model", type=Path, help="GGUF file to open (default: the embedded Gemma-3-270M)")
    parser.add_argument("--self-test", action="store_true", help="load the model and generate, with no window")
    parser.add_argument("--json", action="store_true", help="with --self-test: print one JSON object")
    parser.add_argument("--gpu", type=parse_gpu, default="auto", help="auto, cpu or a number of layers to offload")
    return parser


def has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    if os.environ.get("QT_QPA_PLATFORM", "").startswith(("offscreen", "minimal", "vnc", "eglfs", "linuxfb")):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The app is offline by design: nothing may reach for a model hub behind our back.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.self_test:
        return self_test(args)
    if not has_display():
        print("medgemma-desktop: no display found (DISPLAY is not set); "
              "run `medgemma-desktop --self-test` to check the engine without a window", file=sys.stderr)
        return 1
    if importlib.util.find_spec("PySide6") is None:
        print("medgemma-desktop: the window needs PySide6: pip install 'medgemma-edge[desktop]'", file=sys.stderr)
        return 1
    from .app import run_app

    return run_app(args.model)


def self_test(args: argparse.Namespace) -> int:
    from .self_test import run_self_test

    try:
        result = run_self_test(args.model, gpu=args.gpu)
    except MedGemmaError as exc:
        print(f"self-test failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the self-test exists to report, never to dump a traceback
        print(f"self-test failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            if key != "answer":
                print(f"{key}: {value}")
        print(f"answer: {result['answer'].strip()[:200]!r}")
    return 0
