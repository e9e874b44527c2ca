"""Fetching a base or an adapter from the Hugging Face hub (huggingface-hub, honouring HF_TOKEN and its cache).

Only a source written `hub:owner/name` is ever downloaded: a mistyped local path that happens to
look like `owner/name` must not silently reach the network.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from medgemma_models.errors import ConversionError

from .progress import Progress

PREFIX = "hub:"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# How often the download is looked at: each look is a progress report, and so a chance to cancel.
_POLL_SECONDS = 0.5

BASE_FILES = [
    "config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.model", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "README.md",
]
# adapter_model.bin is fetched only so that the plan can refuse it with an explanation.
ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"]


def repo_id(source: str) -> str | None:
    """'owner/name' of a 'hub:owner/name' source; None for anything else (a local path)."""
    if not source.startswith(PREFIX):
        return None
    repo = source[len(PREFIX):]
    if not _REPO_ID.fullmatch(repo) or ".." in repo:
        raise ConversionError(f"{source} is not a hub repo id (expected hub:owner/name)")
    return repo


def download_hint(source: str) -> str:
    """For a local path that was not found: how to ask for a download, when it looks like a repo id."""
    return f"; to download {source} from the Hugging Face hub, pass {PREFIX}{source}" if _REPO_ID.fullmatch(source) else ""


def locate(source: str, files: list[str], what: str, progress: Progress) -> tuple[str, Path]:
    """(the source's name, its local path): a hub:owner/name source is downloaded to the hub cache
    and named by its repo id; any other is a local path, returned as given (it may not exist)."""
    repo = repo_id(source)
    if repo is not None:
        return repo, fetch(repo, files, what, progress)
    return source, Path(source).expanduser()


def fetch(repo: str, files: list[str], what: str, progress: Progress) -> Path:
    """The local snapshot folder of `repo`; offline, a clear error naming what to pass instead.

    The download runs in a child process while this one reports progress (total 0: unknown), so
    that a cancel (SIGTERM, raised from a progress report) stops it at once: huggingface-hub's
    download threads cannot be interrupted, and the interpreter would wait for them at exit.
    """
    stage = f"download {repo}"
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1")
    child = subprocess.Popen([sys.executable, "-I", "-c", DOWNLOAD_CODE, repo, json.dumps(files)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            progress(stage, 0, 0)
            try:
                out, err = child.communicate(timeout=_POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                continue
    except BaseException:
        child.kill()
        child.wait()
        raise
    progress(stage, 1, 1)
    result = _last_json_line(out) if child.returncode == 0 else {}
    if isinstance(result.get("path"), str):
        return Path(result["path"])
    hint = f"download {repo} on a connected machine and pass its local folder as {what}"
    failure = result.get("failure")
    if failure == "gated":
        raise ConversionError(f"{repo} is gated on the hub: accept its terms there and set HF_TOKEN")
    if failure == "not found":
        raise ConversionError(f"{repo} was not found on the hub (private? set HF_TOKEN); or {hint}")
    if failure == "offline":
        raise ConversionError(f"{repo} is not in the hub cache and the hub cannot be reached (offline); {hint}")
    reason = result.get("detail") or " ".join((err.strip().splitlines() or ["no output"])[-1].split())
    raise ConversionError(f"could not download {repo} ({reason}); {hint}")


def _last_json_line(text: str) -> dict:
    lines = text.strip().splitlines()
    try:
        value = json.loads(lines[-1]) if lines else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# Run with `python -I -c`: prints one JSON line, {"path": ...} or {"failure": ..., "detail": ...}.
DOWNLOAD_CODE = """
import json, sys
from huggingface_hub import snapshot_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
try:
    result = {"path": snapshot_download(sys.argv[1], allow_patterns=json.loads(sys.argv[2]))}
except GatedRepoError:
    result = {"failure": "gated"}
except RepositoryNotFoundError:
    result = {"failure": "not found"}
except LocalEntryNotFoundError:
    result = {"failure": "offline"}
except (HfHubHTTPError, OSError) as exc:
    result = {"failure": "other", "detail": type(exc).__name__}
print(json.dumps(result))
"""
