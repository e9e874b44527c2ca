"""Images through llama.cpp's mtmd in the chat engine, on the tiny multimodal model and its mmproj.

What matters to a user: the image reaches the model (it changes the answer), the prompt places it
as Gemma 3's processor does, and a follow-up question about the same image does not encode it
again (the engine's own counters say so, not a clock).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from medgemma_desktop.engine import Engine
from medgemma_desktop.generation import ModelRequest, open_model
from medgemma_desktop.settings import LoadParams, SamplingParams
from medgemma_models.catalog import presets
from medgemma_models.errors import MedGemmaError
from medgemma_models.mtmd_compat import RgbImage
from medgemma_models.prompt import PromptImage, Turn
from tests.support.tiny_vision import BOI_ID, EOI_ID, IMAGE_SIZE, TOKENS_PER_IMAGE, fixed_image

GREEDY = SamplingParams(temperature=0.0, max_tokens=6)


def picture(seed: int) -> PromptImage:
    pixels = fixed_image(IMAGE_SIZE, seed).tobytes()
    return PromptImage(hashlib.sha256(pixels).hexdigest(), RgbImage(IMAGE_SIZE, IMAGE_SIZE, pixels))


@pytest.fixture
def engine(vision_pair):
    engine, loaded = open_model(Engine, ModelRequest(vision_pair.model, mmproj=vision_pair.mmproj,
                                                     options=LoadParams(n_ctx=512)))
    assert loaded.vision
    yield engine
    engine.close()


def prompt_for(turns: list[Turn]):
    return presets()["gemma-chat"].build_prompt(turns, think=False)


def last_logits(engine: Engine, tokens: list[int]) -> np.ndarray:
    """The logits after the prompt: one greedy token, then the row the prompt's last position left."""
    import llama_cpp

    list(engine.stream(tokens, SamplingParams(temperature=0.0, max_tokens=1)))
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(engine.llm.model))
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(engine.llm.ctx, -1), shape=(n_vocab,)).copy()


def test_an_image_sits_between_blank_lines_and_takes_its_mtmd_positions(engine):
    image = picture(1)
    prompt = prompt_for([Turn("user", "What is this? <start_of_image>", (image,))])
    tokens = engine.tokenize(prompt)
    positions = [i for i, t in enumerate(tokens) if t < 0]
    # <start_of_image>, the image's embeddings, <end_of_image>: all evaluated by mtmd as one run.
    assert len(positions) == TOKENS_PER_IMAGE + 2 and positions == list(range(positions[0], positions[-1] + 1))
    assert prompt.text.startswith("<bos><start_of_turn>user\n\n\n[image]\n\nWhat is this?")
    # What the user typed stays text: no <start_of_image> control token anywhere but mtmd's own.
    assert BOI_ID not in tokens and EOI_ID not in tokens


def test_the_image_reaches_the_model(engine):
    question = "Describe the image."
    one = last_logits(engine, engine.tokenize(prompt_for([Turn("user", question, (picture(1),))])))
    other = last_logits(engine, engine.tokenize(prompt_for([Turn("user", question, (picture(2),))])))
    assert np.abs(one - other).max() > 1e-3


def test_a_follow_up_question_reuses_the_encoded_image(engine, vision_pair):
    image = picture(3)
    first = [Turn("user", "What is shown?", (image,))]
    answer = "".join(engine.stream(engine.tokenize(prompt_for(first)), GREEDY))
    assert engine.last_stats.images_encoded == 1 and engine.images_encoded == 1
    follow_up = [*first, Turn("model", answer), Turn("user", "And the left side?")]
    tokens = engine.tokenize(prompt_for(follow_up))
    kept = "".join(engine.stream(tokens, GREEDY))
    assert engine.last_stats.images_encoded == 0 and engine.images_encoded == 1
    image_end = max(i for i, t in enumerate(tokens) if t < 0) + 1
    assert engine.last_stats.reused_tokens >= image_end

    # The kept cache answers exactly as a fresh engine that encodes everything again.
    fresh, _ = open_model(Engine, ModelRequest(vision_pair.model, mmproj=vision_pair.mmproj,
                                               options=LoadParams(n_ctx=512)))
    try:
        again = "".join(fresh.stream(fresh.tokenize(prompt_for(follow_up)), GREEDY))
        assert fresh.last_stats.images_encoded == 1
    finally:
        fresh.close()
    assert kept == again


def test_a_changed_earlier_turn_encodes_the_image_again(engine):
    image, chat = picture(4), presets()["gemma-chat"]
    turns = [Turn("user", "What is shown?", (image,))]
    list(engine.stream(engine.tokenize(chat.build_prompt(turns, system="Be brief.", think=False)), GREEDY))
    list(engine.stream(engine.tokenize(chat.build_prompt(turns, system="Be brief.", think=False)), GREEDY))
    assert engine.last_stats.images_encoded == 0  # the same prompt: the image is in the cache
    list(engine.stream(engine.tokenize(chat.build_prompt(turns, system="Be thorough.", think=False)), GREEDY))
    # The prompt changed before the image: the cache up to it is no use, so it is encoded again.
    assert engine.last_stats.images_encoded == 1 and engine.images_encoded == 2


def test_an_image_on_a_model_without_projector_is_refused_in_one_sentence(gemma_270m):
    engine, _ = open_model(Engine, ModelRequest(gemma_270m, options=LoadParams(n_ctx=512)))
    try:
        with pytest.raises(MedGemmaError, match="no vision projector"):
            engine.tokenize(prompt_for([Turn("user", "What is this?", (picture(1),))]))
    finally:
        engine.close()
