"""Bad input: one clear error line, nothing written. Every refusal of issue 3, on the tiny models."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.support.tiny import gemma3_config, make_adapter, make_model

from medgemma_convert.options import ConversionOptions
from medgemma_convert.pipeline import convert
from medgemma_convert.plan import plan
from medgemma_models.errors import MedGemmaError


def run(base: Path | str, out: Path, adapters: list[str] = (), quant: str = "f32", **kwargs) -> dict:
    options = ConversionOptions.create(base=str(base), out=out, adapters=[str(a) for a in adapters], quant=quant, **kwargs)
    return convert(plan(options))


def assert_refused(match: str, base: Path | str, out_dir: Path, adapters: list = (), **kwargs) -> str:
    with pytest.raises(MedGemmaError, match=match) as info:
        run(base, out_dir / "model.gguf", adapters, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert list(out_dir.iterdir()) == [], "a refused conversion left files behind"
    return message


def copy_adapter(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def edit_config(adapter: Path, **changes) -> None:
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def rename_tensors(adapter: Path, old: str, new: str) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(adapter / "adapter_model.safetensors")
    save_file({k.replace(old, new): v for k, v in tensors.items()}, adapter / "adapter_model.safetensors")


def test_adapter_shapes_that_do_not_fit(tiny, out_dir, tmp_path):
    wide = make_model(tmp_path / "wide", gemma3_config(hidden_size=96), tiny.tokenizer)
    adapter = make_adapter(wide, tmp_path / "wide-lora")
    message = assert_refused("does not fit the base", tiny.base("gemma3"), out_dir, [adapter])
    assert "model.layers.0.self_attn.q_proj" in message
    assert "(4, 96)" in message and "(64, 64)" in message


@pytest.mark.parametrize(("old", "new", "missing"), [
    ("layers.0.self_attn.q_proj", "layers.0.self_attn.qkv_proj", "model.layers.0.self_attn.qkv_proj"),  # a module
    ("layers.5.", "layers.9.", "model.layers.9.self_attn.q_proj"),  # a layer past the base's last
], ids=["module", "layer"])
def test_adapter_targeting_what_the_base_lacks(tiny, out_dir, tmp_path, old, new, missing):
    adapter = copy_adapter(tiny.adapter("gemma3", "qv"), tmp_path / "odd")
    rename_tensors(adapter, old, new)
    assert_refused(f"targets {missing}, which the base does not have", tiny.base("gemma3"), out_dir, [adapter])


def test_adapter_made_for_another_architecture(tiny, out_dir, tmp_path):
    adapter = copy_adapter(tiny.adapter("gemma3", "qv"), tmp_path / "for-gemma2")
    edit_config(adapter, base_model_name_or_path="google/gemma-2-2b")
    assert_refused(r"made for google/gemma-2-2b \(gemma2, hidden size 2304\), but the base is gemma3 with hidden size 64",
                   tiny.base("gemma3"), out_dir, [adapter])


def test_adapter_base_named_differently_only_warns(tiny, out_dir, tmp_path):
    adapter = copy_adapter(tiny.adapter("gemma3", "qv"), tmp_path / "renamed")
    edit_config(adapter, base_model_name_or_path="someone/tiny-gemma3")
    options = ConversionOptions.create(base=str(tiny.base("gemma3")), out=out_dir / "m.gguf", adapters=[str(adapter)], quant="f32")
    the_plan = plan(options)
    assert any("trained on someone/tiny-gemma3" in w for w in the_plan.warnings)
    convert(the_plan)
    assert (out_dir / "m.gguf").is_file()


def test_adapter_on_embed_tokens(tiny, out_dir, tmp_path):
    adapter = make_adapter(tiny.base("gemma3"), tmp_path / "embed", targets=("q_proj", "embed_tokens"))
    assert_refused("changes .*embed_tokens.*not supported", tiny.base("gemma3"), out_dir, [adapter])


def test_adapter_on_lm_head(tiny, out_dir, tmp_path):
    adapter = copy_adapter(tiny.adapter("gemma3", "qv"), tmp_path / "head")
    edit_config(adapter, target_modules=["q_proj", "v_proj", "lm_head"])
    assert_refused("changes lm_head; Gemma ties lm_head to embed_tokens", tiny.base("gemma3"), out_dir, [adapter])


def test_adapter_with_modules_to_save(tiny, out_dir, tmp_path):
    adapter = make_adapter(tiny.base("gemma3"), tmp_path / "saves", modules_to_save=["lm_head"])
    assert_refused(r"saves whole modules \(modules_to_save", tiny.base("gemma3"), out_dir, [adapter])


def test_dora_adapter(tiny, out_dir, tmp_path):
    adapter = make_adapter(tiny.base("gemma3"), tmp_path / "dora", use_dora=True)
    assert_refused("is a DoRA adapter", tiny.base("gemma3"), out_dir, [adapter])


def test_base_that_is_not_gemma(out_dir, tmp_path):
    base = tmp_path / "llama"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    assert_refused("is LlamaForCausalLM; only Gemma-2 and Gemma-3 text models are supported", base, out_dir)


def test_missing_adapter_safetensors(tiny, out_dir, tmp_path):
    adapter = copy_adapter(tiny.adapter("gemma3", "qv"), tmp_path / "empty")
    (adapter / "adapter_model.safetensors").unlink()
    assert_refused("missing adapter weights", tiny.base("gemma3"), out_dir, [adapter])


def test_corrupt_adapter_safetensors(tiny, out_dir, tmp_path):
    adapter = copy_adapter(tiny.adapter("gemma3", "qv"), tmp_path / "corrupt")
    (adapter / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert_refused("corrupt safetensors file", tiny.base("gemma3"), out_dir, [adapter])


def test_truncated_base_safetensors(tiny, out_dir, tmp_path):
    base = tmp_path / "cut"
    shutil.copytree(tiny.base("gemma3"), base)
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert_refused("truncated safetensors file", base, out_dir)


def test_quantized_base_checkpoint(tiny, out_dir, tmp_path):
    # A bitsandbytes 4-bit base stores packed uint8 weights; QLoRA users sometimes pass it.
    from safetensors.numpy import load_file, save_file

    base = tmp_path / "4bit"
    shutil.copytree(tiny.base("gemma3"), base)
    weights = load_file(base / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    weights[name] = weights[name].view(np.uint8)[:, ::8].copy()
    save_file(weights, base / "model.safetensors")
    message = assert_refused(f"stores {name} as U8, a quantized checkpoint", base, out_dir)
    assert "pass the 16-bit release" in message


def test_adapter_weights_not_float(tiny, out_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    adapter = copy_adapter(tiny.adapter("gemma3", "qv"), tmp_path / "int")
    weights = {k: v.astype(np.int32) for k, v in load_file(adapter / "adapter_model.safetensors").items()}
    save_file(weights, adapter / "adapter_model.safetensors")
    assert_refused("is stored as I32/I32, not float32/float16/bfloat16", tiny.base("gemma3"), out_dir, [adapter])


def test_pickled_adapter_bin(tiny, out_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    adapter = copy_adapter(tiny.adapter("gemma3", "qv"), tmp_path / "pickled")
    torch.save(load_file(adapter / "adapter_model.safetensors"), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    message = assert_refused("adapter_model.bin is a pickle", tiny.base("gemma3"), out_dir, [adapter])
    assert "save_file(" in message and "weights_only=True" in message


def test_unknown_quant(tiny, out_dir):
    message = assert_refused("unknown quantization 'q9_9'; valid: ", tiny.base("gemma3"), out_dir, quant="f16,q9_9")
    assert "q4_k_m" in message and "bf16" in message


def test_unknown_preset(tiny, out_dir):
    assert_refused("unknown preset 'nope'", tiny.base("gemma3"), out_dir, preset="nope")


def test_missing_output_folder(tiny, tmp_path):
    with pytest.raises(MedGemmaError, match="output folder does not exist"):
        run(tiny.base("gemma3"), tmp_path / "nowhere" / "model.gguf")
    assert not (tmp_path / "nowhere").exists()


def test_read_only_output_folder(tiny, tmp_path):
    # Root may write into any folder whatever its mode; /proc/sys refuses writes even to root.
    if os.geteuid() == 0:
        folder = Path("/proc/sys")
    else:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
    with pytest.raises(MedGemmaError) as info:
        run(tiny.base("gemma3"), folder / "model.gguf")
    assert str(info.value) == f"output folder is not writable: {folder}"
    assert not (folder / "model.gguf").exists() and not (folder / "model.gguf.partial").exists()


def test_existing_output_is_kept_unless_force(tiny, out_dir):
    out = out_dir / "model.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(MedGemmaError, match=re.escape(f"{out} already exists (pass --force to replace it)")):
        run(tiny.base("gemma3"), out)
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.gguf"]
    run(tiny.base("gemma3"), out, force=True)
    assert out.read_bytes()[:4] == b"GGUF"
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.gguf"]


def test_no_disk_space_leaves_nothing(tiny, out_dir):
    # A file-size limit makes every write past 64 KiB fail with EFBIG, as a full disk fails with ENOSPC.
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "from medgemma_convert.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "--base", str(tiny.base("gemma3")), "--adapter", str(tiny.adapter("gemma3", "qv")),
         "--out", str(out_dir / "model.gguf"), "--quant", "f32,q8_0", "--progress", "none"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: could not write {out_dir / 'model-f32.gguf'}: ")
    assert "File too large" in result.stderr or "the disk is full or the file size limit was reached" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])  # Ctrl-C; Cancel in the desktop app
@pytest.mark.parametrize("stage", ["export", "quantize"])
def test_interrupt_leaves_nothing(tiny, out_dir, signal_name, stage):
    # The signal is sent from the progress callback itself, so it lands while files are half
    # written, every time: the f16 export, or the quantizers running on their own threads.
    script = (
        "import os, signal, sys\n"
        # A shell starts background jobs with SIGINT ignored and children inherit that: undo it,
        # as an interactive terminal would have it, so the test means the same however it is run.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from medgemma_convert import progress\n"
        "shown = progress.JsonLines.__call__\n"
        "def interrupting(self, stage, done, total):\n"
        "    shown(self, stage, done, total)\n"
        f"    if stage.startswith({stage!r}) and done >= {3 if stage == 'export' else 1}:\n"
        f"        os.kill(os.getpid(), signal.{signal_name})\n"
        "progress.JsonLines.__call__ = interrupting\n"
        "from medgemma_convert.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "--base", str(tiny.base("gemma3")), "--out", str(out_dir / "model.gguf"),
         "--quant", "f16,q8_0,q4_k_m", "--progress", "json"],
        capture_output=True, text=True,
    )
    assert result.returncode == 130, result.stderr
    assert "interrupted" in result.stderr
    stages = [json.loads(line)["stage"] for line in result.stdout.splitlines()]
    assert any(s.startswith(stage) for s in stages)
    assert list(out_dir.iterdir()) == []


def test_hub_id_offline_names_the_folder_to_pass(tiny, out_dir, tmp_path):
    # A subprocess, so huggingface-hub reads this cache folder and offline switch when it starts.
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf-home"))

    def refused(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "medgemma_convert", *args, "--out", str(out_dir / "m.gguf"),
                                 "--progress", "none"], capture_output=True, text=True, env=env)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert list(out_dir.iterdir()) == []
        return result.stderr

    message = refused("--base", "hub:google/gemma-3-270m")
    assert message.startswith("error: google/gemma-3-270m is not in the hub cache and the hub cannot be reached (offline)")
    assert "pass its local folder as --base" in message
    message = refused("--base", str(tiny.base("gemma3")), "--adapter", "hub:someone/medical-lora")
    assert message.startswith("error: someone/medical-lora is not in the hub cache")
    assert "pass its local folder as --adapter" in message


def test_adapter_tensor_landing_twice_on_one_base_tensor(tiny, out_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    adapter = copy_adapter(tiny.adapter("gemma3", "qv"), tmp_path / "twice")
    tensors = load_file(adapter / "adapter_model.safetensors")
    # The same module once more under the multimodal spelling of its name.
    for key in [k for k in tensors if ".layers.0.self_attn.q_proj." in k]:
        tensors[key.replace("model.model.", "model.model.language_model.", 1)] = tensors[key].clone()
    save_file(tensors, adapter / "adapter_model.safetensors")
    assert_refused("lands on base tensor model.layers.0.self_attn.q_proj.weight a second time", tiny.base("gemma3"), out_dir, [adapter])
