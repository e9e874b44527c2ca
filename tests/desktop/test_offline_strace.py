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
import signal
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


IP_CALL = re.compile(r"\b(connect|bind)\((\d+), \{sa_family=AF_INET6?, (?:sin6?_port=htons\((\d+)\)), .*?"
                     r"(?:inet_addr\(\"([^\"]+)\"\)|inet_pton\(AF_INET6, \"([^\"]+)\")")


def test_a_server_session_listens_only_where_told_and_connects_nowhere(tmp_path: Path, gemma_270m: Path) -> None:
    """`--serve` driven by the openai client: one bind and one listen, on the address given; no connect
    to any non-loopback address."""
    import socket

    import httpx
    import openai

    strace = strace_or_skip()
    with socket.socket() as probe:  # a free port to configure (port 0 would hide which one was bound)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "trace.log"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MEDGEMMA_HOME"] = str(tmp_path / "home")
    code = "import sys; from medgemma_desktop.cli import main; sys.exit(main(sys.argv[1:]))"
    child = subprocess.Popen([strace, "-f", "-qq", "-e", "trace=socket,connect,bind,listen", "-o", str(log),
                              sys.executable, "-c", code, "--serve", "--model", str(gemma_270m), "--port", str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # the child prints its address once it listens (or dies: EOF)
        assert f"127.0.0.1:{port}" in line, line + (child.stderr.read() if child.stderr else "")
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120,
                            http_client=httpx.Client(trust_env=False))
        model = api.models.list().data[0].id
        question = [{"role": "user", "content": "Name one symptom of anaemia."}]
        assert api.chat.completions.create(model=model, messages=question, max_tokens=8).choices  # type: ignore[arg-type]
        assert list(api.chat.completions.create(model=model, messages=question, max_tokens=8, stream=True))  # type: ignore[arg-type]
        # The signal goes to the traced server, not to strace (which would detach and leave it running).
        server = int(Path(f"/proc/{child.pid}/task/{child.pid}/children").read_text().split()[0])
        os.kill(server, signal.SIGTERM)
        child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            for pid in Path(f"/proc/{child.pid}/task/{child.pid}/children").read_text().split():
                os.kill(int(pid), signal.SIGKILL)  # the server first: killing strace alone leaves it running
            child.kill()
    assert child.returncode == 0
    trace = log.read_text().splitlines()
    calls = [(m.group(1), m.group(2), int(m.group(3)), m.group(4) or m.group(5)) for m in map(IP_CALL.search, trace) if m]
    binds = [c for c in calls if c[0] == "bind"]
    assert [(port_, host) for _, _, port_, host in binds] == [(port, "127.0.0.1")]
    assert [c for c in calls if c[0] == "connect" and c[3] not in ("127.0.0.1", "::1")] == []
    # uvicorn calls listen() again on the socket it is given: the same one, still the only one.
    listening = {m.group(1) for m in map(re.compile(r"\blisten\((\d+),").search, trace) if m}
    assert listening == {binds[0][1]}
