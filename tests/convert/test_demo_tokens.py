"""Training tokenizes the demo data exactly as llama.cpp tokenizes the same text on the embedded GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest

from medgemma_convert.demo.dataset import encode, load_items, prompt_text, target_text

pytestmark = pytest.mark.slow


def test_training_tokens_are_llama_cpps_tokens(hf_base_270m: Path, gemma_270m: Path) -> None:
    import llama_cpp
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_base_270m)
    llm = llama_cpp.Llama(model_path=str(gemma_270m), vocab_only=True, verbose=False)
    bos = llm.token_bos()
    end_of_turn = llm.tokenize(b"<end_of_turn>", add_bos=False, special=True)
    assert len(end_of_turn) == 1
    try:
        for item in load_items():
            for think in (True, False):
                example = encode(tokenizer, item, think)
                # The desktop engine tokenizes the prompt this way: its own <bos>, special markers parsed.
                prompt = llm.tokenize(prompt_text(item.question, think).encode(), add_bos=False, special=True)
                target = llm.tokenize(target_text(item, think).encode(), add_bos=False, special=True)
                assert list(example.ids[: example.n_prompt]) == prompt, item.id
                assert list(example.answer_ids) == target, item.id
                assert prompt[0] == bos and prompt.count(bos) == 1
                assert target[-1:] == end_of_turn
    finally:
        llm.close()
