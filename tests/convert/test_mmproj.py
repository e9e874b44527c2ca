"""The vision tower as an mmproj GGUF: what the file says, that llama.cpp's mtmd sees what transformers sees,
vision LoRA in every naming scheme, and the refusals. All on the tiny multimodal model (tests/support/tiny_vision.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from tests.support.gguf_rewrite import rewrite_keys
from tests.support.tiny import kld, llama_logits
from tests.support.tiny_vision import (
    IMAGE_MEAN, IMAGE_SIZE, IMAGE_STD, TOKENS_PER_IMAGE, fixed_image, reference_image_logits,
)

from medgemma_convert.cli import main
from medgemma_convert.image_check import gguf_image_logits
from medgemma_models.errors import ModelFileError
from medgemma_models.mmproj_pair import check_pair
from medgemma_models.mtmd_compat import RgbImage
from medgemma_models.report import ConversionReport

BEFORE, AFTER = "Patient chest", "The diagnosis is"


def convert(base: Path, out: Path, *args: str, adapters: tuple[Path, ...] = ()) -> int:
    argv = ["--base", str(base), "--out", str(out), "--no-verify", "--progress", "none"]
    for adapter in adapters:
        argv += ["--adapter", str(adapter)]
    return main([*argv, *args])


def image() -> RgbImage:
    return RgbImage(IMAGE_SIZE, IMAGE_SIZE, fixed_image().tobytes())


def tensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    reader = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, np.array(t.data)) for t in reader.tensors}


def field(reader: gguf.GGUFReader, key: str) -> object:
    found = reader.get_field(key)
    assert found is not None, f"no {key}"
    return found.contents()


@pytest.fixture(scope="module")
def pair(tiny_vision, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny multimodal model with its all-linear adapter, converted to f16 and its f16 mmproj."""
    out = tmp_path_factory.mktemp("pair") / "tiny.gguf"
    assert convert(tiny_vision.base, out, "--report", str(out.with_suffix(".json")), adapters=(tiny_vision.all_linear,)) == 0
    return out, out.with_name("mmproj-tiny.gguf")


def test_mmproj_says_what_llama_cpp_reads(pair, tiny_vision):
    model, mmproj = pair
    reader = gguf.GGUFReader(mmproj)
    assert field(reader, "general.architecture") == "clip"
    assert field(reader, "general.type") == "mmproj"
    assert field(reader, "clip.projector_type") == "gemma3"
    assert field(reader, "clip.has_vision_encoder") is True
    assert field(reader, "clip.use_gelu") is True
    assert field(reader, "clip.vision.image_size") == IMAGE_SIZE
    assert field(reader, "clip.vision.patch_size") == 8
    assert field(reader, "clip.vision.embedding_length") == 32
    assert field(reader, "clip.vision.feed_forward_length") == 64
    assert field(reader, "clip.vision.block_count") == 2
    assert field(reader, "clip.vision.attention.head_count") == 2
    assert field(reader, "clip.vision.projection_dim") == 64  # the text model's width
    assert field(reader, "clip.vision.projector.scale_factor") == 2  # 4 patches per side pooled to 2 tokens per side
    assert field(reader, "clip.vision.image_mean") == pytest.approx(IMAGE_MEAN)
    assert field(reader, "clip.vision.image_std") == pytest.approx(IMAGE_STD)
    text = gguf.GGUFReader(model)
    for key in ("medgemma.base", "medgemma.adapters"):
        assert field(reader, key) == field(text, key)
    assert field(reader, "medgemma.text_embedding_length") == 64


def test_tensor_names_types_and_norm_shift(pair, tiny_vision):
    from safetensors.numpy import load_file

    written = tensors(pair[1])
    assert written["mm.input_projection.weight"][0] == "F16"
    for name in ("v.patch_embd.weight", "v.position_embd.weight", "v.blk.0.ln1.weight", "v.blk.1.attn_q.bias",
                 "v.post_ln.weight", "mm.soft_emb_norm.weight"):
        assert written[name][0] == "F32", name
    assert written["v.blk.0.attn_q.weight"][0] == "F16"
    assert len([n for n in written if n.startswith("v.blk.")]) == 2 * 16
    stored = load_file(tiny_vision.base / "model.safetensors")
    np.testing.assert_array_equal(written["mm.soft_emb_norm.weight"][1],
                                  stored["multi_modal_projector.mm_soft_emb_norm.weight"] + 1)
    np.testing.assert_array_equal(written["v.position_embd.weight"][1],
                                  stored["vision_tower.embeddings.position_embedding.weight"])


def test_report_and_inspect_list_the_mmproj(pair, capsys):
    model, mmproj = pair
    report = json.loads(model.with_suffix(".json").read_text())
    listed = {o["quant"]: o for o in report["outputs"]}
    assert listed["mmproj"]["path"] == str(mmproj) and listed["mmproj"]["file_type"] == "F16"
    assert report["inputs"]["mmproj"]["type"] == "f16"
    typed = ConversionReport.from_dict(report)
    assert typed.output_paths() == [str(model)] and typed.mmproj_path() == str(mmproj)  # the app loads models only
    capsys.readouterr()
    assert main(["inspect", str(model), "--mmproj", str(mmproj)]) == 0
    shown = capsys.readouterr().out
    assert "fits this model" in shown
    assert main(["inspect", str(mmproj)]) == 0
    shown = capsys.readouterr().out
    assert "architecture     clip" in shown and "projector type   gemma3" in shown
    assert f"tokens per image {TOKENS_PER_IMAGE}" in shown


def test_image_parity_with_transformers_and_peft(pair, tiny_vision):
    """A fixed image of exactly image_size through both; f16 KLD after the image < 1e-3."""
    model, mmproj = pair
    prompt, got = gguf_image_logits(model, mmproj, image(), BEFORE, AFTER)
    assert prompt.ids.count(None) == TOKENS_PER_IMAGE
    reference = reference_image_logits(tiny_vision.base, [tiny_vision.all_linear], prompt.ids, prompt.tail_start,
                                       fixed_image())
    per_position = kld(reference, got)
    print(f"f16 mmproj: mean KLD {per_position.mean():.3g} over {len(per_position)} positions")
    assert per_position.mean() < 1e-3
    assert (reference.argmax(1) == got.argmax(1)).all()
    # The image really matters: another image moves the distributions far more than the export does.
    other = reference_image_logits(tiny_vision.base, [tiny_vision.all_linear], prompt.ids, prompt.tail_start,
                                   255 - fixed_image())
    assert kld(other, got).mean() > 100 * per_position.mean()


def test_q8_0_mmproj_is_reported(tiny_vision, tmp_path):
    out = tmp_path / "tiny.gguf"
    assert convert(tiny_vision.base, out, "--mmproj-type", "q8_0", "--mmproj-out", str(tmp_path / "vision.gguf")) == 0
    written = tensors(tmp_path / "vision.gguf")
    assert written["v.blk.0.attn_q.weight"][0] == "Q8_0" and written["mm.input_projection.weight"][0] == "F16"
    prompt, got = gguf_image_logits(out, tmp_path / "vision.gguf", image(), BEFORE, AFTER)
    reference = reference_image_logits(tiny_vision.base, [], prompt.ids, prompt.tail_start, fixed_image())
    mean = kld(reference, got).mean()
    print(f"q8_0 mmproj: mean KLD {mean:.3g}")
    assert mean < 1e-2


def test_vision_only_adapter_changes_the_image_answer_only(tiny_vision, tmp_path, token_ids_mm):
    plain, tuned = tmp_path / "plain.gguf", tmp_path / "tuned.gguf"
    assert convert(tiny_vision.base, plain) == 0
    assert convert(tiny_vision.base, tuned, adapters=(tiny_vision.vision_only,)) == 0
    _, before = gguf_image_logits(plain, tmp_path / "mmproj-plain.gguf", image(), BEFORE, AFTER)
    prompt, after = gguf_image_logits(tuned, tmp_path / "mmproj-tuned.gguf", image(), BEFORE, AFTER)
    assert kld(before, after).mean() > 1e-3
    reference = reference_image_logits(tiny_vision.base, [tiny_vision.vision_only], prompt.ids, prompt.tail_start,
                                       fixed_image())
    assert kld(reference, after).mean() < 1e-3
    np.testing.assert_array_equal(llama_logits(plain, token_ids_mm), llama_logits(tuned, token_ids_mm))


@pytest.mark.parametrize("scheme", ["release base", "release adapter", "both"])
def test_every_naming_scheme_gives_the_same_files(tiny_vision, pair, tmp_path, scheme):
    """Google's release (vision_tower.vision_model.*, language_model.model.*) and transformers 5 / PEFT 0.21
    (vision_tower.encoder.*, base_model.model.model.*) name the same tensors differently."""
    base = tiny_vision.release_base if scheme != "release adapter" else tiny_vision.base
    adapter = tiny_vision.release_all_linear if scheme != "release base" else tiny_vision.all_linear
    out = tmp_path / "tiny.gguf"
    assert convert(base, out, adapters=(adapter,)) == 0
    for ours, reference in ((out, pair[0]), (tmp_path / "mmproj-tiny.gguf", pair[1])):
        got, want = tensors(ours), tensors(reference)
        assert got.keys() == want.keys()
        for name, (qtype, data) in want.items():
            assert got[name][0] == qtype
            np.testing.assert_array_equal(got[name][1], data, err_msg=name)


def test_no_mmproj_writes_the_text_model_only(tiny_vision, tmp_path, capsys):
    assert convert(tiny_vision.base, tmp_path / "tiny.gguf", "--no-mmproj", adapters=(tiny_vision.all_linear,)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]
    assert "vision-tower module(s) left out" in capsys.readouterr().err


def _refused(capsys, folder: Path, argv: list[str], match: str) -> None:
    before = sorted(folder.iterdir())
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err, err
    assert sorted(folder.iterdir()) == before, "a refusal left files behind"


def _edited_base(tiny_vision, tmp_path: Path, config: dict, preprocessor: dict) -> Path:
    base = tmp_path / "edited"
    shutil.copytree(tiny_vision.base, base)
    for name, changes in (("config.json", config), ("preprocessor_config.json", preprocessor)):
        data = json.loads((base / name).read_text())
        data.update(changes)
        (base / name).write_text(json.dumps(data))
    return base


@pytest.mark.parametrize(("tokens", "match"), [(3, "is not a square number"), (9, "do not divide the 4 patches per side")])
def test_tokens_per_image_that_cannot_pool_are_refused(tiny_vision, tmp_path, capsys, tokens, match):
    base = _edited_base(tiny_vision, tmp_path, {"mm_tokens_per_image": tokens}, {"image_seq_length": tokens})
    out = tmp_path / "out"
    out.mkdir()
    _refused(capsys, out, ["--base", str(base), "--out", str(out / "m.gguf"), "--no-verify", "--progress", "none"], match)


def test_missing_preprocessor_config_is_refused(tiny_vision, tmp_path, capsys):
    base = _edited_base(tiny_vision, tmp_path, {}, {})
    (base / "preprocessor_config.json").unlink()
    out = tmp_path / "out"
    out.mkdir()
    _refused(capsys, out, ["--base", str(base), "--out", str(out / "m.gguf"), "--no-verify", "--progress", "none"], "no preprocessor_config.json")


def test_mmproj_of_another_text_model_is_refused(pair, tiny, tmp_path, capsys):
    model, mmproj = pair
    other = tmp_path / "other.gguf"
    assert main(["--base", str(tiny.base("gemma3")), "--out", str(other), "--no-verify", "--progress", "none"]) == 0
    _refused(capsys, tmp_path, ["inspect", str(other), "--mmproj", str(mmproj)], "was made from the base")
    narrower = rewrite_keys(mmproj, tmp_path / "narrow.gguf", {"clip.vision.projection_dim": 32})
    _refused(capsys, tmp_path, ["inspect", str(model), "--mmproj", str(narrower)], "projects images for a text model 32 wide")
    with pytest.raises(ModelFileError, match="was made from the base"):
        check_pair(other, mmproj)
    _refused(capsys, tmp_path, ["inspect", str(model), "--mmproj", str(model)], "is not an mmproj file")


def test_vision_context_as_the_desktop_uses_it(pair, tiny, tmp_path):
    """Load the mmproj for a llama.cpp model, evaluate an image from RGB bytes, get the next position."""
    from llama_cpp import Llama

    from medgemma_models.mtmd_compat import IMAGE, TEXT, VisionContext, media_marker

    model, mmproj = pair
    llm = Llama(model_path=str(model), n_ctx=128, n_batch=64, n_ubatch=64, verbose=False)
    try:
        with VisionContext(llm, model, mmproj, n_threads=2) as vision:
            with vision.tokenize(f"look\n\n{media_marker()}\n\nhere", [image()]) as chunks:
                kinds = [(c.kind, c.n_tokens) for c in chunks.describe()]
            assert [k for k, _ in kinds] == [TEXT, IMAGE, TEXT] and kinds[1][1] == TOKENS_PER_IMAGE
            # <start_of_image>, the image's tokens, <end_of_image>
            assert vision.eval_image(image(), n_past=3, n_batch=64) == 3 + 1 + TOKENS_PER_IMAGE + 1
            with pytest.raises(ValueError, match="number of images and media markers differ"):
                vision.tokenize("no marker here", [image()])
        other = tmp_path / "other.gguf"
        assert convert(tiny.base("gemma3"), other) == 0
        with pytest.raises(ModelFileError, match="was made from the base"):
            VisionContext(llm, other, mmproj)
    finally:
        llm.close()


def test_full_verification_checks_the_pair_on_an_image(tiny_vision, tmp_path, capsys):
    """--verify adds the image check: the pair against transformers + PEFT, in the report, the mmproj and inspect."""
    out = tmp_path / "tiny.gguf"
    argv = ["--base", str(tiny_vision.base), "--adapter", str(tiny_vision.all_linear), "--out", str(out), "--verify",
            "--progress", "none", "--report", str(tmp_path / "report.json")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    figures = {o["quant"]: o.get("verification") for o in report["outputs"]}
    image_check = figures["mmproj"]
    print(f"image check: {image_check}; text: {figures['f16']}")
    assert image_check["mode"] == "image" and image_check["tokens"] > 3
    assert image_check["mean_kld"] < 1e-3 and image_check["top1"] == 1.0
    stamped = json.loads(field(gguf.GGUFReader(tmp_path / "mmproj-tiny.gguf"), "medgemma.verification"))
    assert stamped == image_check
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "mmproj-tiny.gguf")]) == 0
    assert '"mode": "image"' in capsys.readouterr().out


def test_bnb_4bit_multimodal_base(tiny_vision, tmp_path, capsys):
    """A QLoRA user's 4-bit MedGemma: both files from the dequantized weights, the pair checked on the image."""
    from tests.support.tiny_vision import make_bnb_multimodal

    base = make_bnb_multimodal(tiny_vision.base, tmp_path / "bnb")
    out = tmp_path / "tiny.gguf"
    assert convert(base, out, adapters=(tiny_vision.all_linear,)) == 0
    assert "bitsandbytes 4-bit checkpoint" in capsys.readouterr().err
    prompt, got = gguf_image_logits(out, tmp_path / "mmproj-tiny.gguf", image(), BEFORE, AFTER)
    reference = reference_image_logits_dequantized(base, tiny_vision.all_linear, prompt, fixed_image())
    assert kld(reference, got).mean() < 1e-3


def reference_image_logits_dequantized(base: Path, adapter: Path, prompt, pixels: np.ndarray) -> np.ndarray:
    """The reference child's own image job (it dequantizes a bitsandbytes base with bitsandbytes)."""
    from medgemma_convert.reference import write_image_logits

    folder = base.parent
    (folder / "image.rgb").write_bytes(pixels.tobytes())
    write_image_logits(base, [(adapter, 1.0)], list(prompt.ids), prompt.tail_start, folder / "image.rgb",
                       IMAGE_SIZE, folder / "logits.f32")
    return np.fromfile(folder / "logits.f32", dtype=np.float32).reshape(len(prompt.ids) - prompt.tail_start, -1)


def test_lora_command_writes_the_text_part_and_says_why_not_the_vision_part(tiny_vision, tmp_path, capsys):
    out = tmp_path / "adapter.gguf"
    capsys.readouterr()
    assert main(["lora", "--base", str(tiny_vision.base), "--adapter", str(tiny_vision.all_linear), "--out", str(out),
                 "--progress", "none"]) == 0
    err = capsys.readouterr().err
    assert "vision-tower module(s) left out" in err and "no runtime adapter to an mmproj" in err
    names = [t.name for t in gguf.GGUFReader(out).tensors]
    assert names and not any(n.startswith(("v.", "mm.")) for n in names)
