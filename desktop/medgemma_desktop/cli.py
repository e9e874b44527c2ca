"""`medgemma-desktop`: the chat app, `--ask` for one answer with no window, `--serve` for the local
OpenAI-compatible server, `--self-test` for a check, `--about`."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

from medgemma_models.errors import MedGemmaError
from medgemma_models.offline import go_offline

from .server.config import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_QUEUE


def parse_gpu(value: str) -> str | int:
    if value in ("auto", "cpu"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("use auto, cpu or a number of layers") from None


def parse_adapter(value: str) -> tuple[Path, float]:
    """FILE or FILE:SCALE (a colon followed by anything but a number stays part of the path)."""
    path, colon, scale = value.rpartition(":")
    try:
        return (Path(path), float(scale)) if colon else (Path(value), 1.0)
    except ValueError:
        return Path(value), 1.0


def parse_switch(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError("use on or off")
    return value == "on"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medgemma-desktop",
        description="Offline chat with medical Gemma GGUF models. Not for clinical use.",
    )
    parser.add_argument("--model", type=Path, help="GGUF file to open (default: \"Gemma-3-270M + demo reasoning adapter\" when this build "
                        "ships it, else the embedded Gemma-3-270M; the window reopens the model used last)")
    parser.add_argument("--self-test", action="store_true", help="load the model and generate, with no window")
    parser.add_argument("--ask", metavar="QUESTION",
                        help="answer one question the way the window would, print it and exit (no display needed)")
    parser.add_argument("--adapter", metavar="FILE[:SCALE]", type=parse_adapter, action="append", default=[],
                        help="with --ask or --serve: a GGUF LoRA adapter on top of the model (repeatable; scale 1 by default)")
    parser.add_argument("--image", metavar="FILE", type=Path, action="append", default=[],
                        help="with --ask: an image the question is about: PNG, JPEG, WebP or DICOM (repeatable); "
                        "the model needs its vision projector")
    parser.add_argument("--mmproj", metavar="FILE", type=Path,
                        help="with --ask: the model's vision projector (default, and always for --serve and the "
                        "window: the mmproj-*.gguf beside the model that fits it)")
    parser.add_argument("--docs", metavar="PATH", type=Path, action="append", default=[],
                        help="with --ask: answer from this file or folder (.pdf, .txt, .md; repeatable), "
                        "indexed in a temporary folder, and list the sources")
    parser.add_argument("--think", type=parse_switch, metavar="on|off",
                        help="with --ask: ask for reasoning first (default: the preset's, on)")
    parser.add_argument("--max-tokens", type=int, metavar="N", help="with --ask: the answer's limit (default: the preset's)")
    parser.add_argument("--temperature", type=float, metavar="T", help="with --ask: sampling temperature (0: greedy)")
    parser.add_argument("--about", action="store_true",
                        help="print the version, the llama.cpp build and where the terms and licenses are, and exit")
    parser.add_argument("--json", action="store_true", help="with --ask, --self-test or --about: print one JSON object")
    server = parser.add_argument_group("local server (--serve)", "an OpenAI-compatible API on this machine, no window")
    server.add_argument("--serve", action="store_true", help="serve /v1/chat/completions and /v1/models until Ctrl+C")
    server.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}; any other "
                        "address needs an API key)")
    server.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    keys = server.add_mutually_exclusive_group()
    keys.add_argument("--api-key", metavar="KEY", help="require this key (Authorization: Bearer KEY or x-api-key)")
    keys.add_argument("--api-key-file", metavar="FILE", type=Path, help="require the key stored in FILE")
    server.add_argument("--cors-origin", metavar="ORIGIN", action="append", default=[],
                        help="a web origin allowed to call the API from a browser (repeatable; none by default)")
    server.add_argument("--queue", type=int, default=DEFAULT_QUEUE, metavar="N",
                        help=f"requests that may wait for the model; more get 429 (default {DEFAULT_QUEUE})")
    server.add_argument("--save-history", action="store_true",
                        help="keep the server's conversations in the chat history (off: nothing is kept)")
    parser.add_argument("--gpu", type=parse_gpu, default="auto", help="auto, cpu or a number of layers to offload")
    return parser


def has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    if os.environ.get("QT_QPA_PLATFORM", "").startswith(("offscreen", "minimal", "vnc", "eglfs", "linuxfb")):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.ask is None and (args.think is not None or args.max_tokens or args.temperature is not None):
        parser.error("--think, --max-tokens and --temperature go with --ask")
    if args.adapter and args.ask is None and not args.serve:
        parser.error("--adapter goes with --ask or --serve")
    if args.image and args.ask is None:
        parser.error("--image goes with --ask")
    if args.mmproj and args.ask is None:
        parser.error("--mmproj goes with --ask (the server and the window use the mmproj-*.gguf beside the model)")
    if args.docs and args.ask is None:
        parser.error("--docs goes with --ask")
    # The app is offline by design: nothing may reach for a model hub behind our back.
    go_offline()
    if args.about:
        return about(args)
    if args.ask is not None:
        return ask(args)
    if args.serve:
        return serve(args)
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


def about(args: argparse.Namespace) -> int:
    from .about import about_info, summary_lines

    try:
        info = about_info()
    except MedGemmaError as exc:  # the data folder it names cannot be made
        print(f"medgemma-desktop: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info))
    else:
        print("\n".join(summary_lines(info)))
        print(f"Gemma Terms of Use: {info['terms_file']}")
        if info["licenses_dir"] is not None:
            print(f"Licenses: {info['licenses_dir']}")
    return 0


def self_test(args: argparse.Namespace) -> int:
    from .selftest import run_self_test

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


def serve(args: argparse.Namespace) -> int:
    """Exit 0 after Ctrl+C or SIGTERM, 2 when the address, the key or the model cannot be used."""
    import logging
    import signal

    from .generation import AdapterUse
    from .server.config import ServerConfig, read_key_file
    from .server.serve import serve_headless
    from .settings import GPU_LAYERS, LoadSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    gpu = {"gpu": GPU_LAYERS, "gpu_layers": args.gpu} if isinstance(args.gpu, int) else {"gpu": args.gpu}
    # SIGTERM ends the server as Ctrl+C does (uvicorn handles both once it runs; before, it is an exit).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        key = read_key_file(args.api_key_file) if args.api_key_file else args.api_key
        config = ServerConfig(host=args.host, port=args.port, api_key=key, cors_origins=tuple(args.cors_origin),
                              queue=args.queue, save_history=args.save_history)
        serve_headless(config, args.model, [AdapterUse(path, scale) for path, scale in args.adapter],
                       LoadSettings.from_dict(gpu), lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        return 0
    except MedGemmaError as exc:
        print(f"medgemma-desktop: {exc}", file=sys.stderr)
        return 2
    return 0


def ask(args: argparse.Namespace) -> int:
    """Exit 0 with the answer, 2 when the model, an adapter or a setting cannot be used, 1 when generation fails."""
    from .ask import AskFailed
    from .ask import ask as ask_question
    from .generation import AdapterUse
    from .settings import GPU_LAYERS, LIMITS, LoadSettings

    if not args.ask.strip():
        print("medgemma-desktop: --ask needs a question", file=sys.stderr)
        return 2
    overrides = {}
    for name in ("max_tokens", "temperature"):
        value = getattr(args, name)
        if value is not None:
            low, high = LIMITS[name]
            if not low <= value <= high:
                print(f"medgemma-desktop: --{name.replace('_', '-')} must be between {low:g} and {high:g}", file=sys.stderr)
                return 2
            overrides[name] = value
    gpu = {"gpu": GPU_LAYERS, "gpu_layers": args.gpu} if isinstance(args.gpu, int) else {"gpu": args.gpu}
    adapters = [AdapterUse(path, scale) for path, scale in args.adapter]
    try:
        result = ask_question(args.ask, args.model, adapters if adapters or args.model else None, args.think,
                              LoadSettings.from_dict(gpu), images=args.image, mmproj=args.mmproj,
                              documents=args.docs, **overrides)
    except AskFailed as exc:
        print(f"medgemma-desktop: {exc}", file=sys.stderr)
        return 1
    except MedGemmaError as exc:
        print(f"medgemma-desktop: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one line for the user, never a traceback
        print(f"medgemma-desktop: the answer failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        fields = ("reasoning", "answer", "finish_reason", "prompt_tokens", "generated_tokens", "ttft_ms",
                  "decode_tok_per_s", "model", "preset", "think", "emergency_notice", "images", "image_encode_ms",
                  "citations", "skipped")
        print(json.dumps({k: v for k, v in result.to_dict().items() if k in fields}, ensure_ascii=False))
        return 0
    if result.emergency_notice:
        notice = result.emergency_notice
        print(f"!! {notice['text']} (red flag: {notice['red_flag']}, \"{notice['matched_phrase']}\")")
        if notice["crisis_line"]:
            print(f"!! Crisis line: {notice['crisis_line']}")
        print()
    if result.reasoning:
        print("Reasoning:")
        print(result.reasoning)
        print()
        print("Answer:")
    print(result.answer)
    if args.docs:
        print_sources(result.citations, result.skipped)
    return 0


def print_sources(citations: list[dict], skipped: list[dict]) -> None:
    """The passages the answer was given, then the files that could not be read; plain text."""
    print()
    print("Sources:" if citations else "Sources: no passage in the documents matched the question")
    for number, citation in enumerate(citations, start=1):
        print(f"[{number}] {Path(citation['source']).name}, page {citation['page']} — “{citation['snippet']}”")
    for item in skipped:
        print(f"Skipped {item['source']}: {item['reason']}")
