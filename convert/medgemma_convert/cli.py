"""medgemma-convert: a thin command line over plan() and convert().

Libraries load only when needed: `--help` loads none, a conversion numpy and llama.cpp, and only
the check of the outputs (quick by default, `--verify` for the full one) loads torch,
transformers and peft; `--no-verify` skips it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from medgemma_models.errors import MedGemmaError
from medgemma_models.quants import TENSOR_TYPES
from medgemma_models.report import OutputRecord

from . import __version__
from .heap import return_large_blocks
from .options import HF_DTYPES, LORA_TYPES, MMPROJ_TYPES
from .progress import JsonLines, Progress, ProgressEvent, TextBar, no_progress
from .quants import VALID

DEBUG_VARIABLE = "MEDGEMMA_DEBUG"  # set: unexpected errors show their traceback

EPILOG = """\
other command:
  medgemma-convert inspect FILE.gguf [--json] [--mmproj MMPROJ.gguf]
                                                 show what a GGUF file holds (and whether an mmproj fits it)
  medgemma-convert lora --base BASE --adapter DIR[:SCALE]... --out ADAPTER.gguf
                                                 write PEFT LoRA adapters as one GGUF adapter (unmerged)
  medgemma-convert export-hf MODEL.gguf OUT_DIR  write a GGUF model as a Hugging Face folder

outputs: one --quant writes exactly OUT; several (e.g. f16,q8_0) write OUT-f16.gguf, OUT-q8_0.gguf beside it.
vision: a multimodal base (MedGemma 4B) also writes its vision tower as mmproj-OUT beside OUT, the second file
  llama.cpp, LM Studio and Ollama load for images; an adapter's vision-tower targets are merged into it.
downloads: only a source written hub:OWNER/NAME is fetched from the Hugging Face hub (into its cache, HF_TOKEN
  honoured); a plain OWNER/NAME is a local path, and one that does not exist is an error.
speed: q4_speed (Q6_K blocks, IQ4_NL output matrix, Q8_0 embedding) is larger than q4_k_m and, with
  --imatrix auto, closer to f16; on the 2-core x86 machines measured it decoded the 270M 1.13-1.52x as
  fast as q4_k_m, run to run (the README's Benchmarks say where), and on Apple's and CUDA's builds it is
  not measured: compare with `.venv/bin/python -m tests.bench.bench_quant` on yours.
exit status: 0 done, 2 refused (one line says why; nothing written), 130 interrupted, 1 unexpected error
  (set MEDGEMMA_DEBUG=1 for its traceback).
"""


def _convert_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medgemma-convert",
        description="Merge LoRA adapters into a Gemma-2/Gemma-3 base and export verified, quantized GGUF files.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"medgemma-convert {__version__}")
    p.add_argument("--base", required=True,
                   help="Hugging Face folder, GGUF file, or hub:OWNER/NAME to download from the Hugging Face hub")
    p.add_argument("--adapter", dest="adapters", action="append", default=[], metavar="PATH[:SCALE]",
                   help="PEFT LoRA folder or hub:OWNER/NAME, optionally with a scale; repeatable")
    p.add_argument("--out", required=True, type=Path, metavar="OUT.gguf")
    p.add_argument("--quant", default="f16", metavar="TYPE[,TYPE...]", help=f"one or more of: {', '.join(VALID)} (default f16)")
    p.add_argument("--preset", help="prompt preset recorded in the file (default: found in the catalog)")
    p.add_argument("--name", help="general.name of the model")
    p.add_argument("--license", help="general.license of the model")
    checks = p.add_mutually_exclusive_group()
    checks.add_argument("--verify", dest="verify", action="store_const", const="full", default="quick",
                        help="compare every output with transformers on the whole evaluation text "
                             "(default: a quick check on its first few hundred tokens)")
    checks.add_argument("--no-verify", dest="verify", action="store_const", const="none",
                        help="skip the check (it needs the convert extra: torch, transformers, peft)")
    p.add_argument("--eval-text", type=Path, metavar="FILE", help="evaluation text for the check (default: shipped medical text)")
    p.add_argument("--imatrix", metavar="auto|FILE",
                   help="importance matrix for quantized outputs: 'auto' computes it on a shipped medical text, "
                        "or a file from llama-imatrix (GGUF or .dat)")
    p.add_argument("--calibration-text", type=Path, metavar="FILE", help="with --imatrix auto: your own text as well")
    p.add_argument("--save-imatrix", type=Path, metavar="FILE.gguf", help="keep the importance matrix (llama.cpp's format)")
    p.add_argument("--output-type", type=str.lower, metavar="TYPE", help=f"type of the output matrix: {', '.join(TENSOR_TYPES)}")
    p.add_argument("--embedding-type", type=str.lower, metavar="TYPE",
                   help="type of the token embedding; differing from --output-type writes a separate output matrix")
    p.add_argument("--tensor-type", dest="tensor_types", action="append", default=[], metavar="REGEX=TYPE",
                   help="type of the tensors whose GGUF name matches REGEX; repeatable, the first match wins")
    vision = p.add_mutually_exclusive_group()
    vision.add_argument("--mmproj-out", type=Path, metavar="MMPROJ.gguf",
                        help="where a multimodal base's vision tower goes (default: mmproj-OUT beside the model)")
    vision.add_argument("--no-mmproj", dest="mmproj", action="store_false",
                        help="write the text model only, without the vision tower")
    p.add_argument("--mmproj-type", choices=MMPROJ_TYPES, default="f16",
                   help="tensor type of the mmproj's matrices (default f16)")
    p.add_argument("--report", type=Path, metavar="REPORT.json", help="write a JSON report")
    _add_run_options(p, "existing outputs")
    return p


def _add_run_options(p: argparse.ArgumentParser, replaced: str) -> None:
    """--progress and --force, the same for every subcommand that writes files."""
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    p.add_argument("--force", action="store_true", help=f"replace {replaced}")


def _subcommand_parser(name: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"medgemma-convert {name}", description=description)


def _inspect_parser() -> argparse.ArgumentParser:
    p = _subcommand_parser("inspect", "Show what a GGUF file holds.")
    p.add_argument("file", type=Path, metavar="FILE.gguf")
    p.add_argument("--json", action="store_true", help="print the information as JSON")
    p.add_argument("--mmproj", type=Path, metavar="MMPROJ.gguf",
                   help="check that this vision tower (mmproj) belongs to FILE (exit 2 with the reason if not)")
    return p


def _lora_parser() -> argparse.ArgumentParser:
    p = _subcommand_parser(
        "lora", "Write PEFT LoRA adapters as one GGUF LoRA adapter that llama.cpp applies at runtime, unmerged.")
    p.add_argument("--base", required=True, help="the base the adapters were trained on: Hugging Face folder, hub repo id, or GGUF")
    p.add_argument("--adapter", dest="adapters", action="append", required=True, metavar="DIR[:SCALE]",
                   help="PEFT LoRA folder or hub repo id, optionally with a scale; repeatable (ranks are concatenated)")
    p.add_argument("--out", required=True, type=Path, metavar="ADAPTER.gguf")
    p.add_argument("--outtype", dest="out_type", choices=LORA_TYPES, default="f16", help="tensor type (default f16)")
    p.add_argument("--preset", help="prompt preset recorded in the file (default: found in the catalog)")
    p.add_argument("--name", help="general.name of the adapter")
    p.add_argument("--verify", action="store_true", help="compare base + adapter in llama.cpp with transformers + PEFT")
    p.add_argument("--eval-text", type=Path, metavar="FILE", help="evaluation text for --verify (default: shipped medical text)")
    _add_run_options(p, "an existing output")
    return p


def _export_hf_parser() -> argparse.ArgumentParser:
    p = _subcommand_parser(
        "export-hf", "Write a Gemma GGUF model as a Hugging Face folder (safetensors, config, tokenizer) to fine-tune.")
    p.add_argument("model", type=Path, metavar="MODEL.gguf")
    p.add_argument("out", type=Path, metavar="OUT_DIR")
    p.add_argument("--dtype", choices=HF_DTYPES, default="float32",
                   help="weight type of the safetensors (default float32: a quantized source's values exactly)")
    _add_run_options(p, "an existing OUT_DIR")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # The desktop app's Cancel sends SIGTERM: clean up as for Ctrl-C, leaving no .partial files.
    _stop.clear()
    return_large_blocks()
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


def _print_warnings(warnings: Sequence[str]) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _figures(output: OutputRecord) -> str:
    """'  kld_mean=…  top1=…' of a verified output, '' of an unverified one."""
    figures = output.verification or {}
    return "".join(f"  {k}={v:.4g}" for k, v in figures.items() if isinstance(v, (int, float)))


@contextlib.contextmanager
def _progress(args: argparse.Namespace, json_lines: JsonLines | None) -> Iterator[Progress]:
    """Where --progress sends the reports (a text bar is closed at the end); SIGTERM stops at the next one."""
    bar = TextBar() if args.progress == "bar" else None
    try:
        yield _stopping(json_lines or bar or no_progress)
    finally:
        if bar is not None:
            bar.close()


def _main(args: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    # gguf-py warns about tokenizer.json details that llama.cpp's converter ignores as well.
    logging.getLogger("gguf").setLevel(logging.ERROR)
    if args and args[0] == "inspect":
        return _run(lambda: _inspect(_inspect_parser().parse_args(args[1:])), None)
    if args and args[0] in ("lora", "export-hf"):
        command = _lora if args[0] == "lora" else _export_hf
        parser = _lora_parser() if args[0] == "lora" else _export_hf_parser()
        sub = parser.parse_args(args[1:])
        sub_json = JsonLines() if sub.progress == "json" else None
        return _run(lambda: command(sub, sub_json), sub_json)
    parsed = _convert_parser().parse_args(args)
    json_lines = JsonLines() if parsed.progress == "json" else None
    return _run(lambda: _convert(parsed, json_lines), json_lines)


def _run(action: Callable[[], None], json_lines: JsonLines | None) -> int:
    try:
        action()
    except MedGemmaError as exc:
        if json_lines is not None:
            json_lines.emit(ProgressEvent.failed(str(exc)))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:
        # A bug or an input no check foresaw: still one line, and an error event for the app's dialog.
        if os.environ.get(DEBUG_VARIABLE):
            raise
        message = " ".join(f"internal error: {type(exc).__name__}: {exc}".split())
        if json_lines is not None:
            json_lines.emit(ProgressEvent.failed(message))
        print(f"error: {message} (set {DEBUG_VARIABLE}=1 for the traceback)", file=sys.stderr)
        return 1
    return 0


def _inspect(args: argparse.Namespace) -> None:
    from medgemma_models.gguf_info import read_model_info

    info = read_model_info(args.file)
    if args.mmproj is not None:
        from medgemma_models.mmproj_pair import check_pair

        check_pair(info, args.mmproj)
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
    rows += [(key.replace("_", " "), value) for key, value in info.vision.items() if value is not None]
    rows += [(key, json.dumps(value) if not isinstance(value, str) else value) for key, value in info.provenance.items()]
    if args.mmproj is not None:
        rows.append(("mmproj", f"{args.mmproj} fits this model"))
    for key, value in rows:
        print(f"{key:<16} {value}")


def _lora(args: argparse.Namespace, json_lines: JsonLines | None) -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from .lora_gguf import export_lora
    from .options import LoraOptions
    from .plan import plan_lora

    options = LoraOptions.create(**_option_values(args))
    with _progress(args, json_lines) as progress:
        the_plan = plan_lora(options, progress)
        _print_warnings(the_plan.warnings)
        _print_sizes({options.out: the_plan.size}, args)
        report = export_lora(the_plan, progress)
    if json_lines is not None:
        json_lines.emit(ProgressEvent.finished(report))
        return
    output = report.outputs[0]
    alpha = report.extra["adapter"]["alpha"]
    print(f"{output.path}  adapter {output.file_type}  {output.bytes:,} bytes  alpha {alpha:g}{_figures(output)}")


def _export_hf(args: argparse.Namespace, json_lines: JsonLines | None) -> None:
    from .export_hf import export_hf, plan_export_hf
    from .options import ExportHfOptions

    options = ExportHfOptions.create(**_option_values(args))
    with _progress(args, json_lines) as progress:
        the_plan = plan_export_hf(options, progress)
        _print_warnings(the_plan.warnings)
        _print_sizes({options.out: the_plan.size}, args)
        report = export_hf(the_plan, progress)
    if json_lines is not None:
        json_lines.emit(ProgressEvent.finished(report))
        return
    output = report.outputs[0]
    print(f"{options.out}  {the_plan.arch}  {output.tensor_types}  {output.bytes:,} bytes")


def option_values(argv: Sequence[str]) -> dict[str, object]:
    """What a command line (its first word `lora` or `export-hf`, or neither) hands its options class's
    `create`, without running it. Every flag's default is there, so its keys are all the flags' dests."""
    parser = {"lora": _lora_parser, "export-hf": _export_hf_parser}.get(argv[0] if argv else "")
    return _option_values(parser().parse_args(argv[1:]) if parser else _convert_parser().parse_args(argv))


def _option_values(args: argparse.Namespace) -> dict[str, object]:
    """The parsed flags an options class takes: each flag's dest is the name of its parameter, or of
    its field (tests/convert/test_cli.py checks that every flag has one and every field a flag)."""
    return {name: value for name, value in vars(args).items() if name not in _RUN_ONLY}


_RUN_ONLY = {"progress"}  # flags of the run itself, not of what it converts


def _print_sizes(sizes: dict[Path, int], args: argparse.Namespace, peak: int | None = None) -> None:
    """With the progress bar: what the plan expects to write, against the free space (it has refused what does not fit)."""
    if args.progress != "bar" or not sizes:
        return
    from medgemma_models.files import format_bytes

    folder = next(iter(sizes)).parent
    memory = f"; memory at its peak about {format_bytes(peak)}" if peak else ""
    print(f"writing about {format_bytes(sum(sizes.values()))} in {folder} "
          f"({format_bytes(shutil.disk_usage(folder).free)} free){memory}", file=sys.stderr)


def _convert(args: argparse.Namespace, json_lines: JsonLines | None) -> None:
    # Before numpy loads: its OpenBLAS threads spin between calls, and took a quarter of the CPU
    # from the export; the rank-8 LoRA products they would speed up take milliseconds anyway.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from .options import ConversionOptions
    from .plan import plan

    options = ConversionOptions.create(**_option_values(args))
    with _progress(args, json_lines) as progress:
        the_plan = plan(options, progress)
        _print_warnings(the_plan.warnings)
        _print_sizes(the_plan.sizes, args, the_plan.peak_bytes)
        from .pipeline import convert  # llama.cpp loads here

        report = convert(the_plan, progress)
    if json_lines is not None:
        json_lines.emit(ProgressEvent.finished(report))
        return
    for output in report.outputs:
        print(f"{output.path}  {output.file_type}  {output.bytes:,} bytes  {output.bits_per_weight:.2f} bpw{_figures(output)}")
