"""The verification's reference: the base in float32 with the PEFT adapters, computed by transformers.

It runs in a child process (`python -I -m medgemma_convert.reference JOB.json`, started by
verify.py), so the converter itself never imports torch (350 MB resident once imported) and all
of this half's memory is gone before llama.cpp loads the outputs to compare.

A Hugging Face base is streamed: transformers builds the model without weights, and each module's
weights are read with safetensors' own reader right before the module runs and dropped right after.
Only one module's float32 weights, a slice of the output matrix and the adapters are ever held, and
the adapters stay unmerged: PEFT computes `W x + scaling * B (A x)` itself. A GGUF base (which
transformers must dequantize whole) or a checkpoint whose names do not match the model's is loaded
whole instead, with the adapters merged by PEFT.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from medgemma_models.errors import ConversionError
from medgemma_models.progress import ProgressEvent

from .heap import return_large_blocks
from .progress import JsonLines, Progress, no_progress

if TYPE_CHECKING:
    import torch

# Rows of the output matrix read at once: about 32 MiB of float32 weights whatever the model's width.
_HEAD_SLICE_VALUES = 8 * 1024 * 1024


def reference_model(base: Path, adapters: Sequence[tuple[Path, float]]) -> torch.nn.Module:
    """The base loaded whole in float32, each adapter merged by PEFT at `scale * alpha / r` (rsLoRA: `/ sqrt(r)`)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, GgufConfig

    base = Path(base)
    if base.is_file():
        # Unpacked to plain float32 weights: transformers would otherwise keep GGUF blocks and
        # compute with its own quantized kernels, which is not the reference we want.
        model = AutoModelForCausalLM.from_pretrained(
            base.parent, gguf_file=base.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
    elif _is_quantized(base):
        # A bitsandbytes 4-bit checkpoint: bitsandbytes dequantizes it, the very weights the export reads.
        model = AutoModelForCausalLM.from_pretrained(base, device_map="cpu").dequantize().to(torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    for index, (adapter, scale) in enumerate(adapters):
        name = f"adapter{index}"
        peft_model = PeftModel.from_pretrained(model, str(adapter), adapter_name=name)
        _set_scale(peft_model, name, scale)
        # Merging one adapter at a time sums the deltas: each depends only on its own A and B.
        model = peft_model.merge_and_unload()
    return model.eval()


def _is_quantized(base: Path) -> bool:
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    return isinstance(config.get("quantization_config"), dict)


def _set_scale(model: torch.nn.Module, name: str, scale: float) -> None:
    # PEFT's own user scale: set_scale makes its scaling `scale * alpha / r` (or `/ sqrt(r)`).
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer) and name in module.scaling:
            module.set_scale(name, scale)


class Checkpoint:
    """The tensors of a safetensors checkpoint folder (one file or an index of shards), read on demand.

    Each read opens the file and closes it again: pages of a mapping held open would stay resident
    and add up to the whole model.
    """

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            self.files = {key: folder / name for key, name in weight_map.items()}
        else:
            self.files = {}
            for path in sorted(folder.glob("*.safetensors")):
                with safe_open(path, "pt") as f:
                    self.files.update(dict.fromkeys(f.keys(), path))

    def rows(self, key: str, start: int | None = None, end: int | None = None) -> torch.Tensor:
        """Rows start..end of tensor `key` (all of it by default), as float32."""
        import torch
        from safetensors import safe_open

        with safe_open(self.files[key], "pt") as f:
            stored = f.get_slice(key)
            values = stored[start:end] if start is not None or end is not None else stored[:]
        return values.to(torch.float32)

    def gather(self, key: str, rows: list[int]) -> torch.Tensor:
        """Rows `rows` of tensor `key`, in that order, as float32."""
        import torch
        from safetensors import safe_open

        with safe_open(self.files[key], "pt") as f:
            stored = f.get_slice(key)
            return torch.cat([stored[row : row + 1] for row in rows]).to(torch.float32)

    def size(self, key: str) -> int:
        from safetensors import safe_open

        with safe_open(self.files[key], "pt") as f:
            return int(f.get_slice(key).get_shape()[0])


def streamed_model(base: Path, adapters: Sequence[tuple[Path, float]]
                   ) -> tuple[torch.nn.Module, Callable[[int, int], torch.Tensor], int] | None:
    """The model with weights read as it runs, the adapters unmerged; with the output matrix's row
    reader and its row count. None when the base cannot be streamed."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    if not base.is_dir() or _is_quantized(base):
        return None
    checkpoint = Checkpoint(base)
    config = AutoConfig.from_pretrained(base)
    # Buffers (rotary frequencies, Gemma-3's embedding scale) are computed, not read: real ones.
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    names = {module: name for name, module in model.named_modules()}
    embed_key = f"{names[embed]}.weight"
    head_key = f"{names[head]}.weight"
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if head_key not in checkpoint.files and getattr(text_config, "tie_word_embeddings", False):
        head_key = embed_key  # tied: the checkpoint stores the matrix once, as the embedding
    streamed = [(module, name, [p for p, _ in module.named_parameters(recurse=False)])
                for module, name in names.items() if module is not head and list(module.parameters(recurse=False))]
    keys = [f"{name}.{p}" for _, name, params in streamed for p in params]
    if any(key not in checkpoint.files for key in [*keys, head_key]):
        return None

    # PEFT puts each adapter on its base layer's device: weightless stand-ins on the CPU (one
    # value, broadcast) while the adapters load, then nothing ("meta") until a module runs. A
    # module that ran without its weights would fail loudly on "meta", not compute with zeros.
    _replace_parameters(streamed, lambda p: torch.zeros((), dtype=torch.float32).expand(p.shape))
    model = _attach_unmerged(model, adapters)
    _replace_parameters(streamed, lambda p: p.to("meta"))
    for module, name, params in streamed:
        if module is embed:
            module.register_forward_pre_hook(_embedding_rows(checkpoint, embed_key))
        else:
            module.register_forward_pre_hook(_load(checkpoint, name, params))
        module.register_forward_hook(_drop(params))
    return model.eval(), lambda start, end: checkpoint.rows(head_key, start, end), checkpoint.size(head_key)


def _replace_parameters(streamed: list, make: Callable[[torch.nn.Parameter], torch.Tensor]) -> None:
    import torch

    for module, _, params in streamed:
        for p in params:
            setattr(module, p, torch.nn.Parameter(make(getattr(module, p)), requires_grad=False))


def _load(checkpoint: Checkpoint, name: str, params: list[str]) -> Callable:
    import torch

    def load(module: torch.nn.Module, args: tuple) -> None:
        for p in params:
            setattr(module, p, torch.nn.Parameter(checkpoint.rows(f"{name}.{p}"), requires_grad=False))

    return load


def _drop(params: list[str]) -> Callable:
    import torch

    def drop(module: torch.nn.Module, args: tuple, output: object) -> None:
        for p in params:
            setattr(module, p, torch.nn.Parameter(getattr(module, p).to("meta"), requires_grad=False))

    return drop


def _embedding_rows(checkpoint: Checkpoint, key: str) -> Callable:
    """The embedding's hook: only the rows of the tokens in the input, which it then looks up by their
    place among those rows. The module's own forward does the rest (Gemma-3 scales it there)."""
    import torch

    def load(module: torch.nn.Module, args: tuple) -> tuple:
        unique, places = torch.unique(args[0], return_inverse=True)
        module.weight = torch.nn.Parameter(checkpoint.gather(key, unique.tolist()), requires_grad=False)
        return (places, *args[1:])

    return load


def _attach_unmerged(model: torch.nn.Module, adapters: Sequence[tuple[Path, float]]) -> torch.nn.Module:
    """The model with every adapter active at its scale, unmerged, in float32."""
    from peft import PeftModel

    if not adapters:
        return model
    names = [f"adapter{index}" for index in range(len(adapters))]
    peft_model = None
    for name, (adapter, scale) in zip(names, adapters):
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, str(adapter), adapter_name=name, low_cpu_mem_usage=True)
        else:
            peft_model.load_adapter(str(adapter), adapter_name=name, low_cpu_mem_usage=True)
        _set_scale(peft_model, name, scale)
    peft_model.base_model.set_adapter(names)
    for name, parameter in peft_model.named_parameters():
        if "lora_" in name:
            if parameter.device.type == "meta":
                raise ConversionError(f"the reference could not load the adapter weight {name}")
            parameter.data = parameter.data.float()  # adapters saved in 16 bits compute in float32 here too
    return peft_model.get_base_model()


def write_logits(base: Path, adapters: Sequence[tuple[Path, float]], chunks: list[list[int]], n_vocab: int,
                 out: Path, progress: Progress = no_progress, slice_rows: int | None = None) -> bool:
    """Write the reference's logits of every position but each chunk's last to `out`, in order, as
    float32 rows of `n_vocab`. True when the base was streamed, False when it was loaded whole.

    The output matrix is applied `slice_rows` vocabulary rows at a time (default: about 32 MiB of
    float32 weights).
    """
    import torch

    streamed = streamed_model(base, adapters)
    if streamed is not None:
        model, head_rows, head_size = streamed
    else:
        model = reference_model(base, adapters)
        head_weight = model.get_output_embeddings().weight
        head_rows, head_size = (lambda start, end: head_weight[start:end]), head_weight.shape[0]
    if head_size < n_vocab:
        raise ConversionError(f"the reference model has {head_size} vocabulary rows, the GGUF {n_vocab}")
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    softcap = getattr(config, "final_logit_softcapping", None)
    step = slice_rows or max(1, _HEAD_SLICE_VALUES // config.hidden_size)
    # Rows past the GGUF's vocabulary (padding in some checkpoints) are left out on both sides.
    slices = [(start, min(start + step, n_vocab)) for start in range(0, n_vocab, step)]
    total, done, row = len(chunks) * (1 + len(slices)), 0, 0
    progress("verify: reference", 0, total)
    decoder = model.get_decoder()
    with torch.inference_mode(), open(out, "wb") as sink:
        for chunk in chunks:
            # The model's own forward, split where it costs nothing: the decoder, then the output
            # matrix (and Gemma-2's final soft-capping) a slice of the vocabulary at a time.
            hidden = decoder(input_ids=torch.tensor([chunk]), use_cache=False).last_hidden_state[0, :-1]
            done += 1
            progress("verify: reference", done, total)
            for start, end in slices:
                logits = hidden @ head_rows(start, end).T
                if softcap:
                    logits = torch.tanh(logits / softcap) * softcap
                for i, values in enumerate(logits.numpy()):
                    sink.seek(((row + i) * n_vocab + start) * 4)
                    sink.write(values.tobytes())
                done += 1
                progress("verify: reference", done, total)
            row += len(hidden)
    return streamed is not None


def write_image_logits(base: Path, adapters: Sequence[tuple[Path, float]], ids: list[int | None], tail_start: int,
                       image: Path, size: int, out: Path) -> None:
    """The multimodal reference: logits at positions tail_start.. of `ids` (None: the image's tokens), the RGB
    image in `image` (size x size x 3 bytes) through the base's own image processor, written to `out` as float32."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoConfig, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil

    if _is_quantized(base):
        model = Gemma3ForConditionalGeneration.from_pretrained(base, device_map="cpu").dequantize().to(torch.float32)
    else:
        model = Gemma3ForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    for index, (adapter, scale) in enumerate(adapters):
        from peft import PeftModel

        name = f"adapter{index}"
        peft_model = PeftModel.from_pretrained(model, str(adapter), adapter_name=name)
        _set_scale(peft_model, name, scale)
        model = peft_model.merge_and_unload()
    image_token = AutoConfig.from_pretrained(base).image_token_index
    rgb = np.frombuffer(image.read_bytes(), dtype=np.uint8).reshape(size, size, 3)
    pixels = Gemma3ImageProcessorPil.from_pretrained(base)(images=[Image.fromarray(rgb)], return_tensors="pt")
    input_ids = torch.tensor([[image_token if i is None else i for i in ids]])
    token_type_ids = torch.tensor([[1 if i is None else 0 for i in ids]])
    with torch.inference_mode():
        logits = model.eval()(input_ids=input_ids, pixel_values=pixels["pixel_values"].to(torch.float32),
                              token_type_ids=token_type_ids).logits[0, tail_start:]
    out.write_bytes(logits.to(torch.float32).numpy().tobytes())


def main(argv: Sequence[str] | None = None) -> int:
    """The child's entry point: one JSON job file in; progress as JSON lines on stdout; exit 2 on a
    ConversionError (its message as an error event), 0 when the logits are written."""
    return_large_blocks()  # each module's weights are read and freed in turn
    args = list(sys.argv[1:] if argv is None else argv)
    job = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    events = JsonLines()
    try:
        if job.get("kind") == "image":
            write_image_logits(Path(job["base"]), [(Path(p), float(s)) for p, s in job["adapters"]], job["ids"],
                               int(job["tail_start"]), Path(job["image"]), int(job["size"]), Path(job["out"]))
            return 0
        streamed = write_logits(Path(job["base"]), [(Path(p), float(s)) for p, s in job["adapters"]], job["chunks"],
                                int(job["n_vocab"]), Path(job["out"]), events)
    except ConversionError as exc:
        events.emit(ProgressEvent.failed(str(exc)))
        return 2
    events.emit({"stage": "reference", "streamed": streamed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
