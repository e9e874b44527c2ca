"""Executing a plan: merge + export once, quantize the rest from it, verify, report.

All outputs are written as NAME.partial and renamed together at the end, so an error or Ctrl-C
anywhere leaves no output at all, complete or partial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from medgemma_models.errors import OutputError
from medgemma_models.files import atomic_output, create_partial, sha256_file
from medgemma_models.report import MMPROJ_QUANT as MMPROJ
from medgemma_models.report import ConversionReport, OutputRecord, StageRecord

from . import CONVERTER_ID
from .gguf_export import Provenance, write_gguf
from .mmproj import write_mmproj
from .plan import ConversionPlan
from .progress import Progress, no_progress
from .imatrix import Imatrix, calibration_texts, compute_imatrix, text_sha256, write_imatrix
from .quantize import quantize_all, untie
from .stamp import KEY_IMATRIX, KEY_VERIFICATION, add_string_keys
from .report import StageRecorder, describe_output, write_report


def convert(plan: ConversionPlan, progress: Progress = no_progress) -> ConversionReport:
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
    recipes = plan.recipes
    # Figures known only once a file is written (verification, the imatrix used) are added to it
    # as metadata before it is renamed; it is hashed after that.
    stamped = options.verify != "none" or options.imatrix is not None
    # Each output is hashed and flushed to disk on a thread while the others are written (hashlib
    # and fsync let go of the GIL); the fsync when it is renamed then has nothing left to do.
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
    hashes: dict[str, Future[str]] = {}
    imatrix_record: dict[str, Any] | None = None
    figures: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as outputs:
        outputs.callback(hasher.shutdown, cancel_futures=True)
        partials = {q: outputs.enter_context(atomic_output(p, options.force)) for q, p in plan.outputs.items()}
        saved_imatrix = outputs.enter_context(atomic_output(options.save_imatrix, options.force)) if options.save_imatrix else None
        mmproj = outputs.enter_context(atomic_output(plan.mmproj, options.force)) if plan.mmproj else None
        source = partials.get(plan.intermediate)
        if source is None:
            # Only quantized outputs asked for: the unquantized export is a temporary source.
            source = create_partial(plan.options.out.with_name(f"{plan.options.out.name}.{plan.intermediate}"))
            outputs.callback(source.unlink, missing_ok=True)
        with recorder.stage(f"merge+export {plan.intermediate}"), _naming_failures(plan.outputs.get(plan.intermediate, source)):
            write_gguf(plan.base, plan.adapters, source, plan.intermediate, provenance, progress)
        if plan.intermediate in partials and not stamped:
            hashes[plan.intermediate] = hasher.submit(_hash_and_sync, source)
        if mmproj is not None and plan.vision is not None:
            with recorder.stage(f"export mmproj {options.mmproj_type}"), _naming_failures(plan.mmproj or mmproj):
                write_mmproj(plan.vision, plan.adapters, mmproj, options.mmproj_type, provenance, progress)
            if options.verify != "full":
                hashes[MMPROJ] = hasher.submit(_hash_and_sync, mmproj)
        quantized = {q: p for q, p in partials.items() if q != plan.intermediate}
        if quantized:
            untied = None
            if any(recipes[q].untied for q in quantized):
                untied = create_partial(plan.options.out.with_name(f"{plan.options.out.name}.untied"))
                outputs.callback(untied.unlink, missing_ok=True)
                with recorder.stage("untie output matrix"), _naming_failures(untied):
                    untie(source, untied)
            importance = None
            if options.imatrix is not None:
                with recorder.stage("imatrix"):
                    matrix, imatrix_record = _imatrix(plan, source, progress)
                    if saved_imatrix is not None:
                        write_imatrix(matrix, saved_imatrix)
                importance = matrix.importance()
            stage = "quantize " + "+".join(quantized)
            counts = {q: (0, 1) for q in quantized}  # tensors done, total: one bar for all outputs

            def advance(quant: str, done: int, total: int) -> None:
                counts[quant] = (done, total)
                progress(stage, sum(d for d, _ in counts.values()), sum(t for _, t in counts.values()))

            def finished(quant: str) -> None:
                if not stamped:
                    hashes[quant] = hasher.submit(_hash_and_sync, quantized[quant])

            with recorder.stage(stage):
                quantize_all(source, quantized, advance, finished, recipes, importance, untied)
        if options.verify != "none":
            with recorder.stage("verify"):
                figures = _verify(plan, partials, progress)
        if mmproj is not None and plan.vision is not None and options.verify == "full":
            # The pair's image check: the full verification only, as its reference loads the model whole.
            with recorder.stage("verify image"):
                figures[MMPROJ] = _verify_image(plan, next(iter(partials.values())), mmproj, progress)
                add_string_keys(mmproj, {KEY_VERIFICATION: json.dumps(figures[MMPROJ])})
            hashes[MMPROJ] = hasher.submit(_hash_and_sync, mmproj)
        if stamped:
            with recorder.stage("record figures"):
                for quant, path in partials.items():
                    keys = {}
                    if quant in figures:
                        keys[KEY_VERIFICATION] = json.dumps(figures[quant])
                    if imatrix_record is not None and quant in quantized:
                        keys[KEY_IMATRIX] = json.dumps(imatrix_record)
                    add_string_keys(path, keys)
                    hashes[quant] = hasher.submit(_hash_and_sync, path)
        with recorder.stage("hash outputs"):
            sha256 = {quant: future.result() for quant, future in hashes.items()}
    described = [describe_output(path, quant, sha256[quant]) for quant, path in plan.outputs.items()]
    for output in described:
        output["verification"] = figures.get(output["quant"])
    if plan.mmproj is not None:
        described.append(describe_output(plan.mmproj, MMPROJ, sha256[MMPROJ]))
        described[-1]["verification"] = figures.get(MMPROJ)
    report = ConversionReport(
        converter=CONVERTER_ID,
        inputs={
            "base": {"id": plan.base.id, "kind": plan.base.kind, "path": str(plan.base.path), "architecture": plan.base.arch},
            "adapters": [a.provenance() for a in plan.adapters],
            "quants": list(options.quants),
            "preset": plan.preset,
            "name": plan.name,
            "verify": options.verify,
            "recipes": {q: dataclasses.asdict(r) for q, r in recipes.items()},
            "mmproj": {"type": options.mmproj_type, "path": str(plan.mmproj)} if plan.mmproj else None,
            # The plan's estimates, checked against the free space before any work (bytes above: the real sizes).
            "expected_bytes": {quant: plan.sizes[path] for quant, path in
                               [*plan.outputs.items(), *([(MMPROJ, plan.mmproj)] if plan.mmproj else [])]},
            "expected_peak_rss_bytes": plan.peak_bytes,
        },
        outputs=tuple(OutputRecord(**output) for output in described),
        warnings=tuple(plan.warnings),
        stages=tuple(StageRecord(**stage) for stage in recorder.stages),
        memory_method=recorder.method,
        wall_s=recorder.total_wall(),
        extra={"imatrix": imatrix_record} if imatrix_record is not None else {},
    )
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


def _verify(plan: ConversionPlan, partials: dict[str, Path], progress: Progress) -> dict[str, dict[str, Any]]:
    """Figures of each output (quant -> figures): the quick check, or the full one with --verify."""
    from .verify import QUICK_TOKENS, default_eval_text, verify_outputs

    path = plan.options.eval_text
    text = path.read_text(encoding="utf-8") if path is not None else default_eval_text()
    adapters = [(a.folder, a.scale) for a in plan.adapters]
    max_tokens = QUICK_TOKENS if plan.options.verify == "quick" else None
    results = verify_outputs(plan.base.path, adapters, list(partials.values()), text, progress, max_tokens=max_tokens)
    return {quant: _plain(results[str(path)]) for quant, path in partials.items()}


def _verify_image(plan: ConversionPlan, model: Path, mmproj: Path, progress: Progress) -> dict[str, Any]:
    from .image_check import verify_image

    assert plan.vision is not None
    adapters = [(a.folder, a.scale) for a in plan.adapters]
    return verify_image(plan.base.path, adapters, model, mmproj, plan.vision.image_size, progress)


def _imatrix(plan: ConversionPlan, source: Path, progress: Progress) -> tuple[Imatrix, dict[str, Any]]:
    """The importance matrix asked for, and what the outputs record about it (`medgemma.imatrix`)."""
    options = plan.options
    if plan.imatrix is not None:  # a file, read by the plan
        matrix, sha256 = plan.imatrix, sha256_file(Path(options.imatrix or ""))
    else:
        texts = calibration_texts(options.calibration_text)
        matrix = compute_imatrix(source, texts, progress)
        sha256 = text_sha256("".join(text for _, text in texts))
    record = {"source": options.imatrix if plan.imatrix is None else Path(options.imatrix or "").name,
              "datasets": list(matrix.datasets), "sha256": sha256, "tokens": matrix.tokens, "chunks": matrix.chunk_count}
    return matrix, record


def _plain(figures: Any) -> Any:
    return dataclasses.asdict(figures) if dataclasses.is_dataclass(figures) else figures
