"""The engine on the real Gemma-3-270M file: generation, stopping, KV reuse, offload choice."""

import json
import os
import subprocess
import sys

import pytest

from medgemma_desktop.answer import LoadCancelledError, OffloadReport
from medgemma_desktop.engine import Engine, choose_gpu_layers, gpu_backend_name
from medgemma_desktop.settings import LoadParams, SamplingParams
from medgemma_models.catalog import get_preset
from medgemma_models.errors import ModelFileError, ModelLoadError
from medgemma_models.prompt import Turn

GREEDY = SamplingParams(temperature=0.0, top_k=1, top_p=1.0, max_tokens=24)


@pytest.fixture(scope="module")
def engine(gemma_270m):
    engine = Engine()
    engine.load(gemma_270m, LoadParams(n_ctx=1024, gpu="cpu"))
    yield engine
    engine.close()


def prompt(*texts: str) -> str:
    turns = [Turn("user" if i % 2 == 0 else "model", t) for i, t in enumerate(texts)]
    return get_preset("gemma-chat").build_prompt(turns)


def test_generates_text_and_reports_figures(engine):
    text = "".join(engine.stream(prompt("Name one symptom of anaemia."), GREEDY))
    stats = engine.last_stats
    assert text.strip()
    assert stats.generated_tokens > 0
    assert stats.prompt_tokens == len(engine.tokenize(prompt("Name one symptom of anaemia.")))
    assert stats.finish_reason in ("stop", "length")
    assert stats.ttft_ms > 0
    if stats.generated_tokens > 1:
        assert stats.decode_tok_per_s > 0


def test_greedy_generation_is_repeatable(engine):
    p = prompt("List two causes of chest pain.")
    assert "".join(engine.stream(p, GREEDY)) == "".join(engine.stream(p, GREEDY))


def test_prompt_has_exactly_one_bos(engine):
    tokens = engine.tokenize(prompt("hello"))
    assert tokens[0] == engine.info.bos_id
    assert tokens.count(engine.info.bos_id) == 1


def test_stop_flag_ends_the_stream_between_tokens(engine):
    pieces = []
    settings = SamplingParams(temperature=0.0, top_k=1, max_tokens=200)
    for piece in engine.stream(prompt("Write a long essay on sepsis."), settings, should_stop=lambda: len(pieces) >= 5):
        pieces.append(piece)
    assert engine.last_stats.finish_reason == "cancelled"
    assert engine.last_stats.generated_tokens == 5


def test_max_tokens_limits_the_answer(engine):
    settings = SamplingParams(temperature=0.0, top_k=1, max_tokens=3)
    list(engine.stream(prompt("Describe the kidneys in detail."), settings))
    assert engine.last_stats.generated_tokens <= 3


def test_second_turn_reuses_the_first_turns_cache(engine):
    first = prompt("What is hypertension?")
    answer = "".join(engine.stream(first, GREEDY))
    second = prompt("What is hypertension?", answer, "And how is it treated?")
    assert second.text.startswith(first.text)
    list(engine.stream(second, GREEDY))
    stats = engine.last_stats
    # Everything up to the first answer was already evaluated.
    assert stats.reused_tokens >= len(engine.tokenize(first))
    assert stats.reused_tokens < stats.prompt_tokens


def test_unicode_split_across_tokens_is_decoded_whole(engine):
    text = "".join(engine.stream(prompt("Write the word 'naïve' and the symbol µg."), GREEDY))
    assert "\ufffd" not in text


def test_offload_choice():
    assert choose_gpu_layers("auto", False, 18) == 0
    assert choose_gpu_layers("auto", True, 18) == 19
    assert choose_gpu_layers("cpu", True, 18) == 0
    assert choose_gpu_layers(7, True, 18) == 7
    assert choose_gpu_layers(99, True, 18) == 19
    assert choose_gpu_layers(7, False, 18) == 0
    with pytest.raises(ValueError):
        choose_gpu_layers(-1, True, 18)


def test_backend_names_and_status_words():
    assert gpu_backend_name("CUDA : ARCHS = 890 | CPU : AVX2 = 1", True) == "CUDA"
    assert gpu_backend_name("Metal : EMBED_LIBRARY = 1", True) == "Metal"
    assert gpu_backend_name("CPU : AVX2 = 1", False) == "CPU"
    assert OffloadReport("auto", 0, 18, "CPU").describe() == "CPU (this build has no GPU offload)"
    assert OffloadReport("auto", 19, 18, "CUDA").describe() == "CUDA: 18 of 18 layers"
    assert OffloadReport(10, 10, 18, "CUDA").describe() == "CUDA: 10 of 18 layers"
    fell_back = OffloadReport("auto", 0, 18, "CUDA", "out of memory")
    assert fell_back.describe() == "CPU (CUDA failed: out of memory; retried on CPU)"


def test_this_build_loads_on_cpu_with_auto(gemma_270m):
    engine = Engine()
    report = engine.load(gemma_270m, LoadParams(n_ctx=256))
    try:
        import llama_cpp

        if llama_cpp.llama_supports_gpu_offload():
            assert report.n_gpu_layers == 19
        else:
            assert report.n_gpu_layers == 0
            assert report.describe() == "CPU (this build has no GPU offload)"
    finally:
        engine.close()


def test_load_progress_reaches_the_end_and_can_cancel(gemma_270m):
    seen = []
    engine = Engine()
    engine.load(gemma_270m, LoadParams(n_ctx=256, gpu="cpu"), progress=lambda f: seen.append(f) or True)
    assert seen and seen[-1] == pytest.approx(1.0)
    assert seen == sorted(seen)
    with pytest.raises(LoadCancelledError):
        engine.load(gemma_270m, LoadParams(n_ctx=256, gpu="cpu"), progress=lambda f: f < 0.3)
    # The model loaded before is still there and works.
    assert engine.loaded
    assert "".join(engine.stream(prompt("Hi"), SamplingParams(temperature=0.0, max_tokens=2)))
    engine.close()


def test_broken_file_keeps_the_loaded_model(engine, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a model")
    before = engine.info
    with pytest.raises(ModelFileError):
        engine.load(bad, LoadParams(n_ctx=256, gpu="cpu"))
    assert engine.info is before and engine.loaded


def test_a_gguf_of_another_architecture_is_refused(tmp_path, engine):
    import gguf
    import numpy as np

    path = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="llama model"):
        engine.load(path, LoadParams(n_ctx=256, gpu="cpu"))
    assert engine.info.architecture == "gemma3"


def test_self_test_subprocess(gemma_270m):
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-m", "medgemma_desktop", "--self-test", "--json", "--model", str(gemma_270m)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["architecture"] == "gemma3"
    assert data["file_type"] == "Q4_K_M"
    assert data["prompt_tokens"] > 10
    assert 0 < data["generated_tokens"] <= 64
    assert data["decode_tok_per_s"] >= 0 and data["ttft_ms"] > 0
    for key in ("bits_per_weight", "gpu_offload_supported", "n_gpu_layers", "model"):
        assert key in data
    assert "torch" not in result.stderr


def test_self_test_does_not_import_torch_or_qt(gemma_270m):
    code = (
        "import sys; from medgemma_desktop.cli import main; rc = main(['--self-test', '--model', sys.argv[1]]);"
        "bad = [m for m in ('torch', 'transformers', 'PySide6') if m in sys.modules]; print('IMPORTED', bad); sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(gemma_270m)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "IMPORTED []" in result.stdout


def test_self_test_failure_is_one_line(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "-m", "medgemma_desktop", "--self-test", "--model", str(bad)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "empty" in lines[0]


def test_no_display_says_so_in_one_line():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run([sys.executable, "-m", "medgemma_desktop"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--self-test" in lines[0]
