"""Provably offline: a whole window session, conversion child included, traced by strace at the system-call level.

The Python-level block (`test_ui_offline.py`) only sees Python's `socket`; this sees every socket
any thread or child process opens, from C and C++ too (Qt, llama.cpp, torch). A socket of the
AF_UNIX family (local IPC) is allowed; AF_INET and AF_INET6 fail the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("offline_session_script.py")
NETWORK = re.compile(r"\b(socket|connect)\(.*\bAF_INET6?\b")


def strace_or_skip() -> str:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (Debian/Ubuntu: apt-get install strace); "
                    "the Python-level offline test still runs")
    probe = subprocess.run([strace, "-f", "-qq", "-e", "trace=socket", "true"], capture_output=True, text=True)
    if probe.returncode != 0:  # e.g. a container without ptrace permission
        pytest.skip(f"strace cannot trace here: {probe.stderr.strip()}")
    return strace


@pytest.fixture(scope="module")
def tiny_peft(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random Gemma-3 base and a LoRA adapter for it (the convert extra builds them)."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from tests.support.tiny import gemma3_config, make_adapter, make_model, train_tokenizer

    root = tmp_path_factory.mktemp("tiny-offline")
    train_tokenizer(root / "tokenizer")
    base = make_model(root / "base", gemma3_config(), root / "tokenizer", seed=0)
    return base, make_adapter(base, root / "lora", seed=1)


def test_the_strace_check_sees_a_socket_opened_from_c(tmp_path: Path) -> None:
    """The check itself: a socket made by a child process of the traced one is seen."""
    strace = strace_or_skip()
    log = tmp_path / "trace.log"
    code = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import socket; socket.socket()'])"
    subprocess.run([strace, "-f", "-qq", "-e", "trace=socket,connect", "-o", str(log), sys.executable, "-c", code],
                   check=True)
    assert [line for line in log.read_text().splitlines() if NETWORK.search(line)]


def test_a_whole_window_session_opens_no_network_socket(tmp_path: Path, gemma_270m: Path,
                                                        tiny_peft: tuple[Path, Path]) -> None:
    strace = strace_or_skip()
    base, adapter = tiny_peft
    out = tmp_path / "out"
    out.mkdir()
    log = tmp_path / "trace.log"
    env = {**os.environ, "MEDGEMMA_HOME": str(tmp_path / "home"), "QT_QPA_PLATFORM": "offscreen"}
    run = subprocess.run([strace, "-f", "-qq", "-e", "trace=socket,connect,execve", "-o", str(log),
                          sys.executable, str(SCRIPT), str(gemma_270m), str(base), str(adapter), str(out)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["answers"] == 2 and result["cards"] == 4 and result["converted"] == [str(out / "tiny.gguf")]
    trace = log.read_text().splitlines()
    # The conversion ran as a traced child process: what it did is in this trace too.
    assert any("execve(" in line and "medgemma_convert" in line for line in trace)
    network = [line for line in trace if NETWORK.search(line)]
    assert network == []
