"""Hostile or broken converter inputs (issue 12, item 7): each refused with one line naming the file,
the tensor or key and the problem, and nothing left on disk. Plus progress (and so a cancel) while
planning and downloading (item 8)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_refusals import assert_refused, copy_adapter, edit_config, run

from medgemma_convert.options import ConversionOptions
from medgemma_convert.plan import plan

Q_PROJ = "model.layers.0.self_attn.q_proj"
ADAPTER_KEY = f"base_model.model.{Q_PROJ}"


@pytest.fixture
def base(tiny, tmp_path: Path) -> Path:
    """A private copy of the tiny Gemma-3 base, free to be damaged."""
    return Path(shutil.copytree(tiny.base("gemma3"), tmp_path / "base"))


@pytest.fixture
def adapter(tiny, tmp_path: Path) -> Path:
    """A private copy of the tiny q/v adapter (r 4, alpha 8)."""
    return copy_adapter(tiny.adapter("gemma3", "qv"), tmp_path / "adapter")


def rewrite_header(path: Path, change: Callable[[dict], None]) -> None:
    """Edit a safetensors header in place; the data offsets count from its end, so they stay valid."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    change(header)
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + raw[8 + n :])


def edit_weights(path: Path, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = {name: array.copy() for name, array in load_file(path).items()}  # writable
    change(tensors)
    save_file(tensors, path)


def edit_base_config(base: Path, **changes) -> None:
    config = json.loads((base / "config.json").read_text())
    config.update(changes)
    (base / "config.json").write_text(json.dumps(config))


def cli(*args: str, env: dict[str, str] | None = None, script: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "medgemma_convert", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env)


# --- safetensors headers -------------------------------------------------------------------------


def test_entry_whose_bytes_do_not_match_shape_and_dtype(base, out_dir):
    name = f"{Q_PROJ}.weight"
    rewrite_header(base / "model.safetensors", lambda h: h[name].update(dtype="F16"))  # half the bytes it spans
    message = assert_refused("spans 16,384 bytes, but F16 of shape \\(64, 64\\) needs 8,192", base, out_dir)
    assert f"corrupt safetensors file {base / 'model.safetensors'}: tensor {name} " in message


def test_entry_overlapping_another(tiny, adapter, out_dir):
    # lora_B (64 x 4) reading lora_A's (4 x 64) bytes: the same size, so nothing else would notice.
    def point_b_at_a(header: dict) -> None:
        header[f"{ADAPTER_KEY}.lora_B.weight"]["data_offsets"] = header[f"{ADAPTER_KEY}.lora_A.weight"]["data_offsets"]

    rewrite_header(adapter / "adapter_model.safetensors", point_b_at_a)
    message = assert_refused(f"tensor {ADAPTER_KEY}.lora_[AB].weight .* overlaps tensor {ADAPTER_KEY}.lora_[AB].weight",
                             tiny.base("gemma3"), out_dir, [adapter])
    assert str(adapter / "adapter_model.safetensors") in message


def test_entry_starting_inside_the_header(tiny, adapter, out_dir):
    def move_a_into_header(header: dict) -> None:
        header[f"{ADAPTER_KEY}.lora_A.weight"]["data_offsets"] = [-1024, 0]

    rewrite_header(adapter / "adapter_model.safetensors", move_a_into_header)
    assert_refused(f"tensor {ADAPTER_KEY}.lora_A.weight starts inside the header", tiny.base("gemma3"), out_dir, [adapter])


@pytest.mark.parametrize("where", ["safetensors header", "adapter_config.json", "config.json", "tokenizer_config.json"])
def test_deeply_nested_json(tiny, base, adapter, out_dir, where):
    nested = '{"x": ' + "[" * 200_000 + "]" * 200_000 + "}"
    if where == "safetensors header":
        data = nested.encode()
        (adapter / "adapter_model.safetensors").write_bytes(len(data).to_bytes(8, "little") + data)
        match = f"corrupt safetensors file {adapter / 'adapter_model.safetensors'}: its JSON is nested too deeply"
    elif where == "tokenizer_config.json":
        (base / where).write_text(nested)
        match = f"unreadable tokenizer files in {base}: JSON nested too deeply"
    else:
        path = (adapter if where == "adapter_config.json" else base) / where
        path.write_text(nested)
        match = f"corrupt {path}: its JSON is nested too deeply"
    assert_refused(f"^{match}$", base, out_dir, [adapter])


# --- adapter configs and scales ------------------------------------------------------------------


@pytest.mark.parametrize(("r", "tensor_rank", "match"), [
    (0, 0, "gives r as 0, not a whole number above 0"),
    (4, 0, f"{Q_PROJ} has rank 0 in adapter_model.safetensors, but adapter_config.json gives it rank 4"),
])
def test_adapter_of_rank_zero(tiny, adapter, out_dir, r, tensor_rank, match):
    def empty_ranks(tensors: dict[str, np.ndarray]) -> None:
        for key, value in tensors.items():
            tensors[key] = np.zeros((tensor_rank, value.shape[1]) if ".lora_A." in key else (value.shape[0], tensor_rank),
                                    dtype=value.dtype)

    edit_weights(adapter / "adapter_model.safetensors", empty_ranks)
    edit_config(adapter, r=r)
    assert_refused(match, tiny.base("gemma3"), out_dir, [adapter])


@pytest.mark.parametrize(("changes", "match"), [
    ({"r": "four"}, "gives r as 'four', not a whole number above 0"),
    ({"r": 4.0}, "gives r as 4.0, not a whole number above 0"),
    ({"lora_alpha": "8"}, "gives lora_alpha as '8', not a finite number"),
    ({"lora_alpha": float("nan")}, "gives lora_alpha as nan, not a finite number"),
    ({"lora_alpha": float("inf")}, "gives lora_alpha as inf, not a finite number"),
    ({"alpha_pattern": {"v_proj": float("nan")}}, r"gives alpha_pattern\['v_proj'\] as nan, not a finite number"),
    ({"rank_pattern": {"v_proj": -4}}, r"gives rank_pattern\['v_proj'\] as -4, not a whole number above 0"),
    ({"use_rslora": "false"}, "gives use_rslora as 'false', not true or false"),
])
def test_adapter_config_numbers(tiny, adapter, out_dir, changes, match):
    edit_config(adapter, **changes)
    message = assert_refused(match, tiny.base("gemma3"), out_dir, [adapter])
    assert message.startswith(f"adapter {adapter}: adapter_config.json gives ")


@pytest.mark.parametrize("scale", ["nan", "inf", "-inf"])
def test_adapter_scale_not_finite(tiny, adapter, out_dir, scale):
    assert_refused(f"--adapter {adapter}: the scale {float(scale)} is not a finite number",
                   tiny.base("gemma3"), out_dir, [f"{adapter}:{scale}"])


# --- NaN, infinities and float16 overflow --------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_in_adapter_weights(tiny, adapter, out_dir, value):
    key = f"{ADAPTER_KEY}.lora_B.weight"
    edit_weights(adapter / "adapter_model.safetensors", lambda t: t[key].__setitem__((3, 1), value))
    assert_refused(f"^adapter {adapter}: {Q_PROJ}.lora_B.weight holds NaN or infinite values$",
                   tiny.base("gemma3"), out_dir, [adapter])


@pytest.mark.parametrize("name", [
    f"{Q_PROJ}.weight",  # changed by the adapter
    "model.layers.3.mlp.up_proj.weight",  # untouched
    "model.layers.2.input_layernorm.weight",  # a norm, shifted by 1
])
def test_nan_in_base_weights(base, adapter, out_dir, name):
    edit_weights(base / "model.safetensors", lambda t: t[name].reshape(-1).__setitem__(5, np.nan))
    assert_refused(f"^the base weight {name} in model.safetensors holds NaN or infinite values$", base, out_dir, [adapter])


def test_inf_in_a_base_tensor_streamed_in_row_blocks(base, out_dir, monkeypatch):
    # The 262,144-row embedding of a real Gemma is streamed in row blocks; make the tiny one stream too.
    from medgemma_convert import merge

    monkeypatch.setattr(merge, "BLOCK_ELEMENTS", 1024)
    name = "model.embed_tokens.weight"
    edit_weights(base / "model.safetensors", lambda t: t[name].__setitem__((300, 7), -np.inf))
    assert_refused(f"^the base weight {name} in model.safetensors holds NaN or infinite values$", base, out_dir)


def test_float16_overflow_on_export(base, out_dir):
    name = "model.layers.4.mlp.down_proj.weight"
    edit_weights(base / "model.safetensors", lambda t: t[name].__setitem__((0, 0), 1e5))  # finite in float32
    assert_refused(f"^{name} has values beyond float16's range", base, out_dir, quant="f16")
    run(base, out_dir / "model.gguf", quant="bf16")  # bfloat16 holds it


# --- rank_pattern / alpha_pattern keys -----------------------------------------------------------


def test_pattern_keys_match_as_peft_does(tiny, tmp_path):
    from peft.utils.other import get_pattern_key

    adapter = copy_adapter(tiny.adapter("gemma3", "all"), tmp_path / "patterns")  # r 4, alpha 16
    alpha_pattern = {"q_proj|v_proj": 32, "model.layers.1.mlp.down_proj": 2, r".*layers\.[3-5]\.mlp\.up_proj": 64}
    edit_config(adapter, alpha_pattern=alpha_pattern)
    options = ConversionOptions.create(base=str(tiny.base("gemma3")), out=tmp_path / "m.gguf", adapters=[str(adapter)])
    [resolved] = plan(options).adapters
    for target in resolved.targets:
        key = get_pattern_key(alpha_pattern.keys(), target.module)
        assert target.alpha == alpha_pattern.get(key, 16), target.module
    assert sorted({t.alpha for t in resolved.targets}) == [2, 16, 32, 64]


@pytest.mark.parametrize(("key", "match"), [
    ("(", r"alpha_pattern key '\(' is not a valid regular expression"),
    ("(a+)+b", r"alpha_pattern key '\(a\+\)\+b' repeats a group or has over two open-ended repeats"),
    ("q.*_.*p.*roj", r"alpha_pattern key 'q\.\*_\.\*p\.\*roj' repeats a group or has over two open-ended repeats"),
])
def test_pattern_keys_that_are_unsafe_regular_expressions(tiny, adapter, out_dir, key, match):
    edit_config(adapter, alpha_pattern={key: 16})
    message = assert_refused(match, tiny.base("gemma3"), out_dir, [adapter])
    assert message.startswith(f"adapter {adapter}: adapter_config.json alpha_pattern key ")


# --- config.json against the weights -------------------------------------------------------------


def test_config_with_fewer_layers_than_the_weights(base, out_dir):
    edit_base_config(base, num_hidden_layers=4, layer_types=["sliding_attention"] * 4)
    message = assert_refused(r"num_hidden_layers is 4, but model.safetensors has model\.layers\.[45]\.", base, out_dir)
    assert str(base / "config.json") in message


@pytest.mark.parametrize(("changes", "match"), [
    ({"num_hidden_layers": 8}, "num_hidden_layers is 8, but the weights have no layer 6"),
    ({"intermediate_size": 256}, r"implies shape \(64, 256\) for model.layers.0.mlp.down_proj.weight, but model.safetensors has \(64, 128\)"),
    ({"num_key_value_heads": 2}, r"implies shape \(64, 64\) for model.layers.0.self_attn.k_proj.weight, but model.safetensors has \(32, 64\)"),
    ({"hidden_size": 96}, r"implies shape \(512, 96\) for model.embed_tokens.weight, but model.safetensors has \(512, 64\)"),
    ({"head_dim": "32"}, "head_dim is '32', not a whole number from 1 to 4,194,304"),
])
def test_config_sizes_that_disagree_with_the_tensors(base, out_dir, changes, match):
    edit_base_config(base, **changes)
    assert_refused(match, base, out_dir)


def test_layer_missing_a_tensor(base, out_dir):
    edit_weights(base / "model.safetensors", lambda t: t.pop("model.layers.3.mlp.up_proj.weight"))
    assert_refused(f"^the weights in {base} have no ffn_up tensor in layer 3$", base, out_dir)


def test_absurd_vocab_size_is_refused_before_any_allocation(base, out_dir):
    edit_base_config(base, vocab_size=1e10)
    assert_refused(r"config.json: vocab_size is 10000000000.0, not a whole number from 1 to 4,194,304", base, out_dir)
    edit_base_config(base, vocab_size=4_000_000)  # a whole number, but more rows than the embedding has
    assert_refused(r"config.json: vocab_size is 4,000,000, but model.embed_tokens.weight has only 512 rows", base, out_dir)


def test_weight_map_pointing_outside_the_folder(base, tmp_path, out_dir):
    # A real shard outside the folder: without the check, it would be read and converted.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (base / "model.safetensors").rename(elsewhere / "model.safetensors")
    from safetensors import safe_open

    with safe_open(elsewhere / "model.safetensors", "np") as f:
        names = list(f.keys())
    for shard in ("../elsewhere/model.safetensors", str(elsewhere / "model.safetensors")):
        index = {"metadata": {}, "weight_map": dict.fromkeys(names, shard)}
        (base / "model.safetensors.index.json").write_text(json.dumps(index))
        assert_refused(f"model.safetensors.index.json maps .* to {shard}, which is outside the model folder", base, out_dir)


# --- the hub: only when asked for, with progress -------------------------------------------------


def test_owner_name_that_is_not_a_local_path_is_not_downloaded(tiny, adapter, out_dir):
    assert_refused("^base not found: google/gemma-3-270m .*; to download google/gemma-3-270m from the Hugging Face hub, "
                   "pass hub:google/gemma-3-270m$", "google/gemma-3-270m", out_dir)
    assert_refused("^adapter not found: someone/medical-lora .*pass hub:someone/medical-lora$",
                   tiny.base("gemma3"), out_dir, ["someone/medical-lora"])


def fake_hub_cache(cache: Path, repo: str, folder: Path) -> None:
    """A hub cache holding `folder` as the snapshot of `repo`, so hub:repo resolves offline."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(folder, root / "snapshots" / commit)


def test_hub_source_reports_the_download(tiny, tmp_path, out_dir):
    cache = tmp_path / "hub-cache"
    fake_hub_cache(cache, "tiny/gemma3", tiny.base("gemma3"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    result = cli("--base", "hub:tiny/gemma3", "--out", str(out_dir / "m.gguf"), "--quant", "f32", "--no-verify",
                 "--progress", "json", env=env)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    stages = [line["stage"] for line in lines]
    first, last = stages.index("download tiny/gemma3"), len(stages) - 1 - stages[::-1].index("download tiny/gemma3")
    assert stages[:first] == ["plan"] and lines[last] == {"stage": "download tiny/gemma3", "done": 1, "total": 1}
    assert lines[last + 1] == {"stage": "plan", "done": 1, "total": 1}
    assert lines[-1]["report"]["inputs"]["base"]["id"] == "tiny/gemma3"


def test_sigterm_during_a_download_stops_it(tiny, tmp_path, out_dir):
    # The download child is replaced by one that never finishes (no network here): a cancel must
    # not wait for it, and must not leave it running.
    pid_file = tmp_path / "download.pid"
    script = (
        "import os, signal, sys\n"
        "from medgemma_convert import hub, progress\n"
        "hub.DOWNLOAD_CODE = 'import os, time; open(os.environ[\"PID_FILE\"], \"w\").write(str(os.getpid())); time.sleep(600)'\n"
        "shown = progress.JsonLines.__call__\n"
        "def terminating(self, stage, done, total):\n"
        "    shown(self, stage, done, total)\n"
        "    if stage.startswith('download') and os.path.getsize(os.environ['PID_FILE']) > 0:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "progress.JsonLines.__call__ = terminating\n"
        "from medgemma_convert.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    pid_file.write_text("")
    result = cli("--base", "hub:someone/big-model", "--out", str(out_dir / "m.gguf"), "--progress", "json",
                 env=dict(os.environ, PID_FILE=str(pid_file)), script=script)
    pid = int(pid_file.read_text())
    try:
        assert result.returncode == 130, result.stderr
        assert "interrupted" in result.stderr
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the download child is gone
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert list(out_dir.iterdir()) == []


# --- the output file and the error protocol ------------------------------------------------------


@pytest.mark.parametrize(("quant", "partial"), [("f32", "model.gguf.partial"), ("q8_0", "model.gguf.f32.partial")])
def test_planted_partial_symlink_is_not_followed(tiny, tmp_path, out_dir, quant, partial):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out_dir / partial).symlink_to(victim)
    run(tiny.base("gemma3"), out_dir / "model.gguf", quant=quant)
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.gguf"]
    assert not (out_dir / "model.gguf").is_symlink()


BROKEN_PLAN = (
    "import sys\n"
    "import medgemma_convert.plan\n"
    "def broken(options, progress=None):\n"
    "    raise RuntimeError('boom\\nsecond line')\n"
    "medgemma_convert.plan.plan = broken\n"
    "from medgemma_convert.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_unexpected_error_is_one_line_and_an_error_event(tiny, out_dir):
    args = ("--base", str(tiny.base("gemma3")), "--out", str(out_dir / "m.gguf"), "--progress", "json")
    env = {k: v for k, v in os.environ.items() if k != "MEDGEMMA_DEBUG"}
    result = cli(*args, env=env, script=BROKEN_PLAN)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: internal error: RuntimeError: boom second line (set MEDGEMMA_DEBUG=1 for the traceback)"
    ]
    assert json.loads(result.stdout.splitlines()[-1]) == {"stage": "error", "message": "internal error: RuntimeError: boom second line"}
    assert list(out_dir.iterdir()) == []

    debug = cli(*args, env=dict(env, MEDGEMMA_DEBUG="1"), script=BROKEN_PLAN)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and "RuntimeError: boom" in debug.stderr


def test_planning_reports_progress_and_honours_sigterm(tiny, out_dir):
    # SIGTERM once the base is planned, before the two adapters are: the conversion stops right there.
    script = (
        "import os, signal, sys\n"
        "from medgemma_convert import progress\n"
        "shown = progress.JsonLines.__call__\n"
        "def terminating(self, stage, done, total):\n"
        "    shown(self, stage, done, total)\n"
        "    if stage == 'plan' and done == 1:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "progress.JsonLines.__call__ = terminating\n"
        "from medgemma_convert.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    adapters = [tiny.adapter("gemma3", "qv"), tiny.adapter("gemma3", "mlp")]
    result = cli("--base", str(tiny.base("gemma3")), *[a for p in adapters for a in ("--adapter", str(p))],
                 "--out", str(out_dir / "m.gguf"), "--progress", "json", script=script)
    assert result.returncode == 130, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [{"stage": "plan", "done": 0, "total": 3}, {"stage": "plan", "done": 1, "total": 3}]
    assert list(out_dir.iterdir()) == []
