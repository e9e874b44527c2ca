"""The contract with llama-cpp-python's mtmd bindings (`llama_cpp.mtmd_cpp`) that `medgemma_models.mtmd_compat` uses.

Every binding it calls is checked here for its C name, argument and result types, and the structures
for the fields it sets, so an upgrade that changes one fails here rather than in a user's chat. The
compat module's behaviour on a real model and mmproj is tested in tests/convert/test_mmproj.py.
"""

from __future__ import annotations

import ctypes

import llama_cpp
import pytest
from llama_cpp import mtmd_cpp

from medgemma_models.mtmd_compat import RgbImage, media_marker

# binding -> (number of arguments, result type)
USED = {
    "mtmd_default_marker": (0, ctypes.c_char_p),
    "mtmd_context_params_default": (0, mtmd_cpp.mtmd_context_params),
    "mtmd_init_from_file": (3, mtmd_cpp.mtmd_context_p_ctypes),
    "mtmd_support_vision": (1, ctypes.c_bool),
    "mtmd_free": (1, None),
    "mtmd_bitmap_init": (3, mtmd_cpp.mtmd_bitmap_p_ctypes),
    "mtmd_bitmap_free": (1, None),
    "mtmd_input_chunks_init": (0, mtmd_cpp.mtmd_input_chunks_p_ctypes),
    "mtmd_input_chunks_free": (1, None),
    "mtmd_input_chunks_size": (1, ctypes.c_size_t),
    "mtmd_input_chunks_get": (2, mtmd_cpp.mtmd_input_chunk_p_ctypes),
    "mtmd_input_chunk_get_type": (1, ctypes.c_int),
    "mtmd_input_chunk_get_n_tokens": (1, ctypes.c_size_t),
    "mtmd_input_chunk_get_tokens_text": (2, ctypes.POINTER(llama_cpp.llama_token)),
    "mtmd_tokenize": (5, ctypes.c_int),
    "mtmd_helper_eval_chunk_single": (8, ctypes.c_int),
    "mtmd_helper_log_set": (2, None),
}


@pytest.mark.parametrize("name", sorted(USED))
def test_binding_has_the_signature_used(name: str) -> None:
    function = getattr(mtmd_cpp, name)
    n_args, result = USED[name]
    c_function = getattr(mtmd_cpp._libmtmd, name)  # what ctypes_function bound the Python name to
    assert len(c_function.argtypes) == n_args, f"{name} takes {len(c_function.argtypes)} arguments now"
    assert c_function.restype == result, f"{name} returns {c_function.restype} now"
    assert callable(function)


def test_eval_chunk_single_takes_positions_and_returns_the_next_one() -> None:
    argtypes = mtmd_cpp._libmtmd.mtmd_helper_eval_chunk_single.argtypes
    assert argtypes[3] == llama_cpp.llama_pos and argtypes[-1] == ctypes.POINTER(llama_cpp.llama_pos)
    assert argtypes[5] == ctypes.c_int and argtypes[6] == ctypes.c_bool  # n_batch, logits_last


def test_structures_have_the_fields_set() -> None:
    params = dict(mtmd_cpp.mtmd_context_params._fields_)
    assert params["use_gpu"] == ctypes.c_bool and params["print_timings"] == ctypes.c_bool
    assert params["n_threads"] == ctypes.c_int
    text = [name for name, _ in mtmd_cpp.mtmd_input_text._fields_]
    assert text == ["text", "text_len", "add_special", "parse_special"]  # built positionally
    assert (mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT, mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE) == (0, 1)


def test_media_marker() -> None:
    assert media_marker() == "<__media__>"


def test_rgb_image_needs_three_bytes_a_pixel() -> None:
    RgbImage(2, 2, bytes(12))
    with pytest.raises(ValueError, match="needs 12 bytes"):
        RgbImage(2, 2, bytes(11))
