"""Images in the app against a bare mtmd call, with MedGemma 4B's vision widths (random weights:
timing only). The model is made here from a config (SigLIP so400m: 27 layers, 1152 wide, 896x896
images in 14-pixel patches pooled to 256 tokens; a text model 2560 wide) and converted by the
converter, so the mmproj is the one users get.

    .venv/bin/python -m tests.bench.bench_images [--work DIR] [--rounds 3] [--threads N]

- encode: the app's image encode time (the engine's own figure for a first question) over a bare
  `VisionContext.eval_image` of the same image on the same pair and threads. Target >= 0.95
  (reported as bare / app: 1.0 means no overhead).
- follow-up: time to first token of a second question about the same image over the first's.
  Target <= 0.3, thanks to the KV cache kept across turns.
- the seconds to encode one 896x896 image on this CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from medgemma_desktop.engine import Engine
from medgemma_desktop.generation import ModelRequest, open_model
from medgemma_desktop.settings import LoadParams, SamplingParams
from medgemma_models.catalog import presets
from medgemma_models.mtmd_compat import RgbImage, VisionContext
from medgemma_models.prompt import PromptImage, Turn

MEDGEMMA_VISION = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16}
MEDGEMMA_TEXT = {"hidden_size": 2560, "intermediate_size": 256, "num_attention_heads": 8, "num_key_value_heads": 4,
                 "head_dim": 256, "query_pre_attn_scalar": 256}
SIDE, PATCH, TOKENS = 896, 14, 256
GREEDY = SamplingParams(temperature=0.0, max_tokens=4)


def build_pair(work: Path) -> tuple[Path, Path]:
    from medgemma_convert.cli import main as convert
    from tests.support.tiny import train_tokenizer
    from tests.support.tiny_vision import IMAGE_TOKENS, make_multimodal_model

    model = work / "out" / "medgemma-widths.gguf"
    mmproj = model.with_name(f"mmproj-{model.stem}.gguf")
    if model.is_file() and mmproj.is_file():
        return model, mmproj
    train_tokenizer(work / "tokenizer", IMAGE_TOKENS)
    base = make_multimodal_model(work / "base", work / "tokenizer", seed=3, tokens_per_image=TOKENS, image_size=SIDE,
                                 patch_size=PATCH, widths={"vision_config": MEDGEMMA_VISION,
                                                           "text_config": MEDGEMMA_TEXT})
    model.parent.mkdir(parents=True, exist_ok=True)
    assert convert(["--base", str(base), "--out", str(model), "--no-verify", "--progress", "none"]) == 0
    return model, mmproj


def picture(seed: int) -> PromptImage:
    pixels = np.random.default_rng(seed).integers(0, 255, (SIDE, SIDE, 3), np.uint8).tobytes()
    return PromptImage(hashlib.sha256(pixels).hexdigest(), RgbImage(SIDE, SIDE, pixels))


def bare_encode_ms(model: Path, mmproj: Path, image: PromptImage, threads: int) -> float:
    """mtmd alone: a fresh llama.cpp context, one image evaluated at position 0."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model), n_ctx=1024, n_threads=threads, swa_full=True, verbose=False)
    try:
        with VisionContext(llm, model, mmproj, n_threads=threads) as vision:
            started = time.perf_counter()
            vision.eval_image(image.rgb, 0, llm.n_batch)
            return (time.perf_counter() - started) * 1000
    finally:
        llm.close()


def app_round(model: Path, mmproj: Path, image: PromptImage, threads: int) -> tuple[float, float, float]:
    """(image encode ms, first TTFT ms, follow-up TTFT ms) through the app's engine."""
    engine, _ = open_model(Engine, ModelRequest(model, mmproj=mmproj, options=LoadParams(n_ctx=1024, n_threads=threads)))
    try:
        chat = presets()["gemma-chat"]
        first = [Turn("user", "Describe this chest X-ray.", (image,))]
        answer = "".join(engine.stream(engine.tokenize(chat.build_prompt(first, think=False)), GREEDY))
        one = engine.last_stats
        follow_up = [*first, Turn("model", answer), Turn("user", "Is the heart enlarged?")]
        list(engine.stream(engine.tokenize(chat.build_prompt(follow_up, think=False)), GREEDY))
        two = engine.last_stats
        assert one is not None and two is not None and one.images_encoded == 1 and two.images_encoded == 0
        return one.image_encode_ms, one.ttft_ms, two.ttft_ms
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="where the model is made (kept for the next run)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-images-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        model, mmproj = build_pair(work)
        bare, app, first, follow = [], [], [], []
        for n in range(args.rounds):  # interleaved, so that load on the machine hits both alike
            image = picture(n)
            bare.append(bare_encode_ms(model, mmproj, image, args.threads))
            encode, ttft_one, ttft_two = app_round(model, mmproj, image, args.threads)
            app.append(encode)
            first.append(ttft_one)
            follow.append(ttft_two)
        result = {
            "encode_bare_over_app": round(statistics.median(bare) / statistics.median(app), 3),
            "follow_up_ttft_over_first": round(statistics.median(follow) / statistics.median(first), 3),
            "encode_seconds_896": round(statistics.median(app) / 1000, 2),
            "bare_encode_seconds_896": round(statistics.median(bare) / 1000, 2),
            "threads": args.threads, "rounds": args.rounds,
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
