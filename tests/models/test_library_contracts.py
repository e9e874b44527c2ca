"""Contracts with the private parts of gguf-py and llama-cpp-python this project relies on.

Each is used from one module (`medgemma_models.gguf_compat`, `medgemma_models.llama_cpp_compat`,
`medgemma_models.llama_log`); these tests fail loudly when an upgrade moves or changes one,
before a user meets a slow reader, a silent log or a load without progress.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import inspect
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest

from medgemma_models import gguf_compat, llama_cpp_compat
from medgemma_models.llama_log import LlamaLog


def release(package: str) -> tuple[int, int]:
    major, minor, *_ = importlib.metadata.version(package).split(".")
    return int(major), int(minor)


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


# -- gguf-py ------------------------------------------------------------------------------------


def test_gguf_is_a_release_the_overrides_were_checked_against() -> None:
    assert (0, 17) <= release("gguf") < gguf_compat.TESTED_BELOW, (
        "a gguf-py release not checked yet: check HeaderReader and BulkArrayWriter against it, then raise TESTED_BELOW")


def test_the_overridden_gguf_methods_keep_their_signatures() -> None:
    assert parameters(gguf.GGUFReader._get_field_parts) == ["self", "orig_offs", "raw_type"]
    assert parameters(gguf.GGUFWriter._pack_val) == ["self", "val", "vtype", "add_vtype", "sub_type"]


def test_the_fast_header_reader_reads_what_gguf_py_reads(gemma_270m: Path) -> None:
    fast, full = gguf_compat.HeaderReader(gemma_270m), gguf.GGUFReader(gemma_270m)
    assert list(fast.fields) == list(full.fields)
    arrays = 0
    for name, field in full.fields.items():
        ours = fast.fields[name]
        assert ours.types == field.types, name
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            arrays += 1
            assert int(ours.parts[-1][0]) == len(field.data), name  # the item count, items skipped
        else:
            assert ours.contents() == field.contents(), name
    assert arrays >= 3  # the vocabulary's tokens, scores and types
    assert [(t.name, t.data_offset, t.n_bytes) for t in fast.tensors] == [(t.name, t.data_offset, t.n_bytes) for t in full.tensors]


def test_gguf_py_packs_arrays_through_the_overridden_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bulk: list[int] = []
    original = gguf_compat.pack_array
    monkeypatch.setattr(gguf_compat, "pack_array", lambda val, sub: bulk.append(len(val)) or original(val, sub))
    writer = gguf_compat.BulkArrayWriter(tmp_path / "kv.gguf", "gemma3")
    writer.add_token_list([f"t{i}" for i in range(4096)])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    assert 4096 in bulk


# -- llama-cpp-python ---------------------------------------------------------------------------


def test_llama_cpp_python_is_a_release_the_shims_were_checked_against() -> None:
    assert release("llama_cpp_python") < llama_cpp_compat.TESTED_BELOW, (
        "a llama-cpp-python release not checked yet: check llama_cpp_compat against it, then raise TESTED_BELOW")


def test_ggml_libraries_load_through_llama_cpp_pythons_loader() -> None:
    base = llama_cpp_compat.load_ggml_library("ggml-base")
    cpu = llama_cpp_compat.load_ggml_library("ggml-cpu")
    assert base.ggml_fp32_to_bf16_row and base.ggml_bf16_to_fp32_row and cpu.ggml_cpu_fp32_to_fp16


def test_the_default_log_callback_can_be_put_back() -> None:
    callback = llama_cpp_compat.default_log_callback()
    assert isinstance(callback, llama_cpp.llama_log_callback)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def test_llama_builds_its_model_parameters_through_the_swapped_factory(gemma_270m: Path) -> None:
    assert parameters(llama_cpp.llama_cpp.llama_model_default_params) == []
    seen: list[float] = []
    with llama_cpp_compat.model_params_with_progress(lambda fraction: seen.append(fraction) or True):
        llm = llama_cpp.Llama(model_path=str(gemma_270m), n_ctx=256, verbose=False)
    llm.close()
    assert seen and seen[-1] == pytest.approx(1.0)
    # The swap is undone: a load after it reports nothing.
    llm = llama_cpp.Llama(model_path=str(gemma_270m), n_ctx=256, verbose=False)
    llm.close()
    assert seen[-1] == pytest.approx(1.0) and np.all(np.diff(seen) >= 0)


def test_llama_log_capture_keeps_the_reason_of_a_failed_load(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    lines: list[str] = []
    with LlamaLog(on_line=lambda level, line: lines.append(line)).installed() as captured:
        with pytest.raises(ValueError):
            llama_cpp.Llama(model_path=str(broken), verbose=False)
    assert captured.last_error() and lines
