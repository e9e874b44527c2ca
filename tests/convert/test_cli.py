"""The command line as users and the desktop app run it: subprocesses, real files."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from medgemma_convert import cli as command_line
from medgemma_convert.options import ConversionOptions, ExportHfOptions, LoraOptions
from medgemma_models.files import sha256_file

HEAVY = ("torch", "transformers", "peft", "llama_cpp", "safetensors")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medgemma_convert", *args], capture_output=True, text=True)


def test_help_does_not_import_heavy_libraries():
    script = (
        "import json, sys\n"
        "from medgemma_convert.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as exc:\n    code = exc.code\n"
        f"print(json.dumps({{'code': code, 'loaded': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"code": 0, "loaded": []}
    assert "--adapter PATH[:SCALE]" in result.stdout and "inspect FILE.gguf" in result.stdout


def test_console_script_and_module_both_run():
    script = Path(sys.executable).with_name("medgemma-convert")
    for command in ([str(script), "--help"], [sys.executable, "-m", "medgemma_convert", "--help"]):
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: medgemma-convert")


def test_progress_json_lines_and_report(tiny, tmp_path):
    out, report_path = tmp_path / "tiny.gguf", tmp_path / "report.json"
    adapter = tiny.adapter("gemma3", "all")
    result = cli("--base", str(tiny.base("gemma3")), "--adapter", f"{adapter}:0.5", "--out", str(out),
                 "--quant", "f32,q8_0", "--name", "Tiny medical", "--license", "apache-2.0",
                 "--report", str(report_path), "--progress", "json", "--no-verify")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    stages = [line["stage"] for line in lines]
    assert stages[0] == "plan" and stages[-1] == "done"
    assert "export f32" in stages and "quantize q8_0" in stages
    for line in lines[:-1]:
        assert set(line) == {"stage", "done", "total"} and 0 <= line["done"] <= line["total"]
    report = lines[-1]["report"]
    assert json.loads(report_path.read_text()) == report

    outputs = {o["quant"]: o for o in report["outputs"]}
    assert set(outputs) == {"f32", "q8_0"}
    assert outputs["f32"]["path"] == str(tmp_path / "tiny-f32.gguf")
    assert outputs["q8_0"]["path"] == str(tmp_path / "tiny-q8_0.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "tiny-f32.gguf", "tiny-q8_0.gguf"]
    for o in outputs.values():
        path = Path(o["path"])
        assert o["bytes"] == path.stat().st_size and o["sha256"] == sha256_file(path)
    assert outputs["f32"]["file_type"] == "F32" and outputs["q8_0"]["file_type"] == "Q8_0"
    assert outputs["q8_0"]["tensor_types"]["Q8_0"] > 0
    assert outputs["q8_0"]["bits_per_weight"] < outputs["f32"]["bits_per_weight"]
    assert report["inputs"]["adapters"][0]["scale"] == 0.5
    assert report["inputs"]["adapters"][0]["sha256"] == sha256_file(adapter / "adapter_model.safetensors")
    for stage in report["stages"]:
        assert stage["wall_s"] >= 0 and stage["peak_rss_bytes"] > 0
    assert [s["stage"] for s in report["stages"]] == ["merge+export f32", "quantize q8_0", "hash outputs"]


def test_inspect_json_reads_back_provenance(tiny, tmp_path):
    out = tmp_path / "tiny.gguf"
    adapter = tiny.adapter("gemma2", "qv")
    convert = cli("--base", str(tiny.base("gemma2")), "--adapter", str(adapter), "--out", str(out),
                  "--quant", "f16", "--preset", "symptom-diagnosis-2b", "--progress", "none")
    assert convert.returncode == 0, convert.stderr
    assert convert.stdout.startswith(str(out))

    result = cli("inspect", str(out), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["architecture"] == "gemma2" and info["file_type"] == "F16"
    assert info["eot_id"] == 5 and info["bos_id"] == 2 and info["eos_id"] == 1
    assert info["provenance"]["preset"] == "symptom-diagnosis-2b"
    assert info["provenance"]["base"] == str(tiny.base("gemma2"))
    assert info["provenance"]["converter"].startswith("medgemma-convert ")
    [entry] = info["provenance"]["adapters"]
    assert entry["id"] == str(adapter) and entry["sha256"] == sha256_file(adapter / "adapter_model.safetensors")
    assert (entry["r"], entry["alpha"], entry["rslora"], entry["scale"]) == (4, 8.0, False, 1.0)

    text = cli("inspect", str(out))
    assert text.returncode == 0
    assert "architecture     gemma2" in text.stdout and "symptom-diagnosis-2b" in text.stdout


def test_inspect_a_broken_file_is_one_line(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_text("not a model")
    result = cli("inspect", str(broken))
    assert result.returncode == 2
    assert result.stderr.startswith("error: broken.gguf is not a GGUF file")
    assert len(result.stderr.strip().splitlines()) == 1


def test_bar_progress_goes_to_stderr(tiny, tmp_path):
    out = tmp_path / "tiny.gguf"
    result = cli("--base", str(tiny.base("gemma3")), "--out", str(out), "--quant", "q8_0", "--progress", "bar")
    assert result.returncode == 0, result.stderr
    assert "export f32" in result.stderr and "quantize q8_0" in result.stderr
    # Only quantized output asked for: the unquantized source was temporary.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]
    assert result.stdout.startswith(f"{out}  Q8_0")


def test_verify_reports_figures_for_each_output(tiny, tmp_path):
    from tests.support.tiny import TEST_TEXT

    text = tmp_path / "eval.txt"
    text.write_text(TEST_TEXT * 3, encoding="utf-8")
    out = tmp_path / "tiny.gguf"
    result = cli("--base", str(tiny.base("gemma3")), "--adapter", str(tiny.adapter("gemma3", "rslora")),
                 "--out", str(out), "--quant", "f32", "--verify", "--eval-text", str(text), "--progress", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])["report"]
    [output] = report["outputs"]
    figures = output["verification"]
    assert figures["tokens"] > 100
    assert figures["top1"] >= 0.99 and figures["mean_kld"] < 1e-4  # ties may flip on a longer text
    assert figures["ppl_gguf"] == pytest.approx(figures["ppl_reference"], rel=1e-3)
    assert "verify" in [s["stage"] for s in report["stages"]]


@pytest.mark.parametrize("argv, options", [
    (["--base", "b", "--out", "o.gguf"], ConversionOptions),
    (["lora", "--base", "b", "--adapter", "a", "--out", "o.gguf"], LoraOptions),
    (["export-hf", "m.gguf", "out"], ExportHfOptions)])
def test_every_flag_is_an_option_and_every_option_a_flag(argv, options):
    """A flag's dest names a parameter of the options' `create`, or a field; each field is set by a flag."""
    dests = set(command_line.option_values(argv))
    parameters = set(inspect.signature(options.create).parameters) - {"kwargs"}
    fields = {f.name for f in dataclasses.fields(options)}
    assert dests <= parameters | fields, dests - parameters - fields
    # `create` turns the strings of --quant into the field quants.
    assert fields <= dests | {"quants"}, fields - dests
