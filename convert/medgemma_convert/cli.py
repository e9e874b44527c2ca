"""medgemma-convert: a thin command line over plan() and convert().

Libraries load only when needed: `--help` loads none, a conversion numpy and llama.cpp, and only
`--verify` loads torch, transformers and peft.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from medgemma_models.errors import MedGemmaError

from . import __version__
from .progress import JsonLines, Progress, TextBar, no_progress
from .quants import VALID

EPILOG = """\
other command:
  medgemma-convert inspect FILE.gguf [--json]   show what a GGUF file holds

outputs: one --quant writes exactly OUT; several (e.g. f16,q8_0) write OUT-f16.gguf, OUT-q8_0.gguf beside it.
"""


def _convert_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medgemma-convert",
        description="Merge LoRA adapters into a Gemma-2/Gemma-3 base and export verified, quantized GGUF files.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"medgemma-convert {__version__}")
    p.add_argument("--base", required=True, help="Hugging Face folder, hub repo id, or GGUF file")
    p.add_argument("--adapter", action="append", default=[], metavar="PATH[:SCALE]",
                   help="PEFT LoRA folder or hub repo id, optionally with a scale; repeatable")
    p.add_argument("--out", required=True, type=Path, metavar="OUT.gguf")
    p.add_argument("--quant", default="f16", metavar="TYPE[,TYPE...]", help=f"one or more of: {', '.join(VALID)} (default f16)")
    p.add_argument("--preset", help="prompt preset recorded in the file (default: found in the catalog)")
    p.add_argument("--name", help="general.name of the model")
    p.add_argument("--license", help="general.license of the model")
    p.add_argument("--verify", action="store_true", help="compare every output with transformers on an evaluation text")
    p.add_argument("--eval-text", type=Path, metavar="FILE", help="evaluation text for --verify (default: shipped medical text)")
    p.add_argument("--report", type=Path, metavar="REPORT.json", help="write a JSON report")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    return p


def _inspect_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medgemma-convert inspect", description="Show what a GGUF file holds.")
    p.add_argument("file", type=Path, metavar="FILE.gguf")
    p.add_argument("--json", action="store_true", help="print the information as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # The desktop app's Cancel sends SIGTERM: clean up as for Ctrl-C, leaving no .partial files.
    _stop.clear()
    previous = signal.signal(signal.SIGTERM, _terminated) if threading.current_thread() is threading.main_thread() else None
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


_stop = threading.Event()


def _terminated(_signum: int, _frame: object) -> None:
    # Only noted here: raised from a signal handler, KeyboardInterrupt can land inside a C call
    # and come out as a SystemError. It is raised at the next progress report instead.
    _stop.set()


def _stopping(progress: Progress) -> Progress:
    def report(stage: str, done: int, total: int) -> None:
        if _stop.is_set():
            raise KeyboardInterrupt
        progress(stage, done, total)

    return report


def _main(args: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    # gguf-py warns about tokenizer.json details that llama.cpp's converter ignores as well.
    logging.getLogger("gguf").setLevel(logging.ERROR)
    if args and args[0] == "inspect":
        return _run(lambda: _inspect(_inspect_parser().parse_args(args[1:])), None)
    parsed = _convert_parser().parse_args(args)
    json_lines = JsonLines() if parsed.progress == "json" else None
    return _run(lambda: _convert(parsed, json_lines), json_lines)


def _run(action: Callable[[], None], json_lines: JsonLines | None) -> int:
    try:
        action()
    except MedGemmaError as exc:
        if json_lines is not None:
            json_lines.emit({"stage": "error", "message": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    return 0


def _inspect(args: argparse.Namespace) -> None:
    from medgemma_models.gguf_info import read_model_info

    info = read_model_info(args.file)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2, default=str))
        return
    rows = [
        ("file", info.path), ("bytes", f"{info.file_size:,}"), ("architecture", info.architecture),
        ("name", info.name), ("size", info.size_label), ("parameters", f"{info.parameter_count:,}"),
        ("file type", info.file_type), ("bits per weight", f"{info.bits_per_weight:.3f}"),
        ("tensor types", ", ".join(f"{k}: {v}" for k, v in sorted(info.tensor_types.items()))),
        ("context length", info.context_length), ("vocabulary", info.vocab_size), ("blocks", info.block_count),
        ("bos / eos / eot", f"{info.bos_id} / {info.eos_id} / {info.eot_id}"),
        ("chat template", "yes" if info.has_chat_template else "no"),
    ]
    rows += [(key, json.dumps(value) if not isinstance(value, str) else value) for key, value in info.provenance.items()]
    for key, value in rows:
        print(f"{key:<16} {value}")


def _convert(args: argparse.Namespace, json_lines: JsonLines | None) -> None:
    # Before numpy loads: its OpenBLAS threads spin between calls, and took a quarter of the CPU
    # from the export; the rank-8 LoRA products they would speed up take milliseconds anyway.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from .options import ConversionOptions
    from .plan import plan

    options = ConversionOptions.create(
        base=args.base, out=args.out, adapters=args.adapter, quant=args.quant, preset=args.preset,
        name=args.name, license=args.license, verify=args.verify,
        eval_text=args.eval_text.absolute() if args.eval_text else None,
        report=args.report.absolute() if args.report else None, force=args.force,
    )
    bar = TextBar() if args.progress == "bar" else None
    progress = _stopping(json_lines or bar or no_progress)
    try:
        progress("plan", 0, 1)
        the_plan = plan(options)
        for warning in the_plan.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        progress("plan", 1, 1)
        from .pipeline import convert  # llama.cpp loads here

        report = convert(the_plan, progress)
    finally:
        if bar is not None:
            bar.close()
    if json_lines is not None:
        json_lines.emit({"stage": "done", "report": report})
        return
    for output in report["outputs"]:
        line = f"{output['path']}  {output['file_type']}  {output['bytes']:,} bytes  {output['bits_per_weight']:.2f} bpw"
        figures = output.get("verification")
        if figures:
            line += "  " + "  ".join(f"{k}={v:.4g}" for k, v in figures.items() if isinstance(v, (int, float)))
        print(line)
