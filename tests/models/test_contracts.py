"""The values both halves share: the conversion report, the progress protocol, provenance, quantizations."""

from __future__ import annotations

import json

import pytest

from medgemma_models import provenance, quants
from medgemma_models.catalog import DEFAULT_PRESET, choose_preset, preset_for_provenance
from medgemma_models.progress import STAGE_DONE, STAGE_ERROR, ProgressEvent
from medgemma_models.report import ConversionReport, OutputRecord, StageRecord


def a_report(**extra: object) -> ConversionReport:
    output = OutputRecord(path="/m/model-q8_0.gguf", quant="q8_0", bytes=300, sha256="ab" * 32, file_type="Q8_0",
                          tensor_types={"Q8_0": 3, "F32": 2}, bits_per_weight=8.5, parameter_count=280,
                          verification={"kld_mean": 0.001})
    return ConversionReport(converter="medgemma-convert 0.1.0", inputs={"base": {"id": "b"}, "adapters": [], "quants": ["q8_0"]},
                            outputs=(output,), warnings=("w",), stages=(StageRecord("quantize q8_0", 1.5, 2048),),
                            memory_method="VmHWM", wall_s=2.0, extra=dict(extra))


def test_the_report_round_trips_through_json() -> None:
    report = a_report(alpha=16.0)
    data = json.loads(report.to_json())
    assert data["alpha"] == 16.0 and data["outputs"][0]["verification"] == {"kld_mean": 0.001}
    assert ConversionReport.from_json(report.to_json()) == report
    assert report.output_paths() == ["/m/model-q8_0.gguf"]


def test_an_output_without_verification_has_no_such_key() -> None:
    output = OutputRecord("/m.gguf", "f16", 1, "0" * 64, "F16", {}, 16.0, 1)
    assert "verification" not in output.to_dict()


@pytest.mark.parametrize("data", [{}, {"converter": "x"}, {"converter": "x", "outputs": [{"path": "p"}]},
                                  {"converter": "x", "outputs": ["not an object"]}])
def test_what_is_not_a_report_says_so(data: dict) -> None:
    with pytest.raises(ValueError, match="not a conversion report"):
        ConversionReport.from_dict(data)


def test_progress_events_are_written_and_read_by_the_same_code() -> None:
    for event in (ProgressEvent("export f16", 3, 10), ProgressEvent.failed("no such base: /x"), ProgressEvent.finished(a_report())):
        line = event.to_json_line()
        assert line.endswith("\n") and line.count("\n") == 1
        assert ProgressEvent.from_json_line(line) == event
    assert json.loads(ProgressEvent("plan", 0, 1).to_json_line()) == {"stage": "plan", "done": 0, "total": 1}
    assert json.loads(ProgressEvent.failed("boom").to_json_line()) == {"stage": STAGE_ERROR, "message": "boom"}
    assert json.loads(ProgressEvent.finished(a_report()).to_json_line())["stage"] == STAGE_DONE


@pytest.mark.parametrize("line", ["a plain log line", "[1, 2]", '{"done": 3}', '{"stage": 5}',
                                  '{"stage": "done", "report": {"outputs": []}}'])
def test_lines_that_are_not_events_are_left_to_the_log(line: str) -> None:
    assert ProgressEvent.from_json_line(line) is None


def test_odd_counts_read_as_zero() -> None:
    assert ProgressEvent.from_json_line('{"stage": "x", "done": "3", "total": true}') == ProgressEvent("x", 0, 0)


def test_provenance_is_read_with_its_types_checked() -> None:
    good = provenance.Provenance.from_dict({
        "base": "google/gemma-3-270m", "preset": "medical-cot-270m", "converter": "medgemma-convert 0.1.0",
        "adapters": [{"id": "a/b", "sha256": "c" * 64, "scale": 0.5, "r": 8}, {"id": ""}, {"scale": 1}, "x"],
    })
    assert good.adapters == (provenance.AdapterRecord("a/b", "c" * 64, 0.5),) and good.adapter_ids == ("a/b",)
    raw = provenance.Provenance.from_dict({provenance.KEY_ADAPTERS: json.dumps([{"id": "x", "scale": "big"}]),
                                           provenance.KEY_BASE: ["not", "text"], provenance.KEY_PRESET: 3})
    assert raw == provenance.Provenance(adapters=(provenance.AdapterRecord("x"),))
    assert provenance.Provenance.from_dict({"adapters": "[not json"}) == provenance.Provenance()


def test_verification_figures_are_read_with_their_types_checked() -> None:
    figures = {"tokens": 319, "mean_kld": 0.0052, "p99_kld": 0.024, "top1": 0.9467, "ppl_reference": 24.1,
               "ppl_gguf": 24.0, "mode": "quick"}
    record = provenance.Provenance.from_dict({provenance.KEY_VERIFICATION: json.dumps(figures)}).verification
    assert record == provenance.VerificationRecord("quick", 319, 0.0052, 0.9467)
    assert record.describe() == "verified (quick, 319 tokens): KLD 0.0052, top-1 94.7%"
    assert provenance.VerificationRecord.from_value({**figures, "mean_kld": -1e-21}).mean_kld == 0.0
    for bad in ("not json {", [], {**figures, "tokens": True}, {**figures, "tokens": 0}, {**figures, "top1": 1.5},
                {**figures, "mean_kld": "small"}, {**figures, "mean_kld": float("nan")}, {"mode": "quick"}):
        assert provenance.VerificationRecord.from_value(bad) is None, bad
    assert provenance.VerificationRecord.from_value({**figures, "mode": "<b>"}).mode == "full"


def test_the_preset_for_a_file_comes_from_one_function() -> None:
    assert preset_for_provenance(provenance.Provenance(preset="medical-cot-270m")) == "medical-cot-270m"
    assert preset_for_provenance(provenance.Provenance(preset="no-such")) == DEFAULT_PRESET
    assert preset_for_provenance(provenance.Provenance()) == DEFAULT_PRESET
    cot = choose_preset(named="medical-cot-270m")
    assert cot is not None and cot.name == "medical-cot-270m"
    assert choose_preset() is None


def test_one_quantization_table() -> None:
    assert quants.VALID[:4] == ("f32", "f16", "bf16", "q8_0") and len(set(quants.VALID)) == len(quants.VALID)
    assert quants.UNQUANTIZED == ("f32", "f16", "bf16")
    assert set(quants.LLAMA_FTYPES) == set(quants.VALID) - set(quants.UNQUANTIZED)
    assert quants.OFFERED == ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_speed") and quants.CHECKED == ("q8_0", "q4_k_m")
    import llama_cpp

    for name, constant in quants.LLAMA_FTYPES.items():
        assert isinstance(getattr(llama_cpp, constant), int), name
