"""Executing a plan: merge + export once, quantize the rest from it, verify, report.

All outputs are written as NAME.partial and renamed together at the end, so an error or Ctrl-C
anywhere leaves no output at all, complete or partial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from medgemma_models.errors import OutputError
from medgemma_models.files import atomic_output, sha256_file

from . import CONVERTER_ID
from .gguf_export import Provenance, write_gguf
from .plan import ConversionPlan
from .progress import Progress, no_progress
from .quantize import quantize_all
from .report import StageRecorder, describe_output, write_report


def convert(plan: ConversionPlan, progress: Progress = no_progress) -> dict[str, Any]:
    """Write every output of `plan`; returns the report (also written to --report if asked)."""
    options = plan.options
    recorder = StageRecorder()
    provenance = Provenance(
        name=plan.name,
        license=options.license,
        base=plan.base.id,
        adapters=tuple(a.provenance() for a in plan.adapters),
        preset=plan.preset,
        converter=CONVERTER_ID,
    )
    # Each output is hashed and flushed to disk on a thread while the others are written (hashlib
    # and fsync let go of the GIL); the fsync when it is renamed then has nothing left to do.
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
    hashes: dict[str, Future[str]] = {}
    with contextlib.ExitStack() as outputs:
        outputs.callback(hasher.shutdown, cancel_futures=True)
        partials = {q: outputs.enter_context(atomic_output(p, options.force)) for q, p in plan.outputs.items()}
        source = partials.get(plan.intermediate)
        if source is None:
            # Only quantized outputs asked for: the unquantized export is a temporary source.
            source = plan.options.out.with_name(plan.options.out.name + f".{plan.intermediate}.partial")
            outputs.callback(source.unlink, missing_ok=True)
        with recorder.stage(f"merge+export {plan.intermediate}"), _naming_failures(plan.outputs.get(plan.intermediate, source)):
            write_gguf(plan.base, plan.adapters, source, plan.intermediate, provenance, progress)
        if plan.intermediate in partials:
            hashes[plan.intermediate] = hasher.submit(_hash_and_sync, source)
        quantized = {q: p for q, p in partials.items() if q != plan.intermediate}
        if quantized:
            stage = "quantize " + "+".join(quantized)
            counts = {q: (0, 1) for q in quantized}  # tensors done, total: one bar for all outputs

            def advance(quant: str, done: int, total: int) -> None:
                counts[quant] = (done, total)
                progress(stage, sum(d for d, _ in counts.values()), sum(t for _, t in counts.values()))

            def finished(quant: str) -> None:
                hashes[quant] = hasher.submit(_hash_and_sync, quantized[quant])

            with recorder.stage(stage):
                quantize_all(source, quantized, advance, finished)
        with recorder.stage("hash outputs"):
            sha256 = {quant: future.result() for quant, future in hashes.items()}
    described = [describe_output(path, quant, sha256[quant]) for quant, path in plan.outputs.items()]
    if options.verify:
        with recorder.stage("verify"):
            figures = _verify(plan, progress)
        for output in described:
            output["verification"] = figures.get(output["path"])
    report = {
        "converter": CONVERTER_ID,
        "inputs": {
            "base": {"id": plan.base.id, "kind": plan.base.kind, "path": str(plan.base.path), "architecture": plan.base.arch},
            "adapters": [a.provenance() for a in plan.adapters],
            "quants": list(options.quants),
            "preset": plan.preset,
            "name": plan.name,
        },
        "outputs": described,
        "warnings": list(plan.warnings),
        "stages": recorder.stages,
        "memory_method": recorder.method,
        "wall_s": recorder.total_wall(),
    }
    if options.report is not None:
        write_report(report, options.report, options.force)
    return report


def _hash_and_sync(path: Path) -> str:
    digest = sha256_file(path)
    with open(path, "rb") as written:
        os.fsync(written.fileno())
    return digest


@contextlib.contextmanager
def _naming_failures(target: Path) -> Iterator[None]:
    """A write error (full disk, file too large) as one line naming the output that failed."""
    try:
        yield
    except OSError as exc:
        # numpy reports a short write without errno: on a full disk or at the file size limit.
        reason = exc.strerror or f"the disk is full or the file size limit was reached ({exc})"
        raise OutputError(f"could not write {target}: {reason}") from exc


def _verify(plan: ConversionPlan, progress: Progress) -> dict[str, Any]:
    from .verify import default_eval_text, verify_outputs

    path = plan.options.eval_text
    text = path.read_text(encoding="utf-8") if path is not None else default_eval_text()
    adapters = [(a.folder, a.scale) for a in plan.adapters]
    results = verify_outputs(plan.base.path, adapters, list(plan.outputs.values()), text, progress)
    return {str(path): _plain(figures) for path, figures in results.items()}


def _plain(figures: Any) -> Any:
    return dataclasses.asdict(figures) if dataclasses.is_dataclass(figures) else figures
