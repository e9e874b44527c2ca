import json
import shutil

import pytest

from medgemma_models.errors import ModelFileError
from medgemma_models.gguf_info import read_model_info


def test_real_270m_header(gemma_270m):
    info = read_model_info(gemma_270m)
    assert info.architecture == "gemma3"
    assert info.file_type == "Q4_K_M"
    assert info.block_count == 18
    assert info.vocab_size == 262144
    assert info.context_length == 32768
    assert info.bos_id == 2 and info.eos_id == 1
    # This GGUF of the pretrained base carries no chat template and no EOT id.
    assert info.chat_template is None and info.eot_id is None
    # About 268M parameters (the embeddings are a large share of them).
    assert 2.6e8 < info.parameter_count < 2.8e8
    # Q4_K_M on rows of 640 columns falls back to larger types: the real figure is above 4.5.
    assert 4.5 < info.bits_per_weight < 9
    assert sum(info.tensor_types.values()) > 100
    assert info.provenance == {}


def test_truncated_file(gemma_270m, tmp_path):
    broken = tmp_path / "cut.gguf"
    with open(gemma_270m, "rb") as src, open(broken, "wb") as dst:
        dst.write(src.read(gemma_270m.stat().st_size // 2))
    with pytest.raises(ModelFileError, match="truncated|corrupt"):
        read_model_info(broken)


def test_header_cut_short(gemma_270m, tmp_path):
    broken = tmp_path / "header.gguf"
    with open(gemma_270m, "rb") as src, open(broken, "wb") as dst:
        dst.write(src.read(100_000))
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        read_model_info(broken)


def test_zero_bytes(tmp_path):
    empty = tmp_path / "empty.gguf"
    empty.touch()
    with pytest.raises(ModelFileError, match="empty"):
        read_model_info(empty)


def test_text_file(tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("patient notes, not a model\n")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        read_model_info(text)


def test_wrong_magic(gemma_270m, tmp_path):
    copy = tmp_path / "magic.gguf"
    shutil.copyfile(gemma_270m, copy)
    with open(copy, "r+b") as f:
        f.write(b"GGML")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        read_model_info(copy)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        read_model_info(tmp_path / "nowhere.gguf")


def test_info_round_trips_to_json(gemma_270m):
    data = read_model_info(gemma_270m).to_dict()
    again = json.loads(json.dumps(data))
    assert again["architecture"] == "gemma3" and again["has_chat_template"] is False
