"""Fetching a base or an adapter by hub repo id (huggingface-hub, honouring HF_TOKEN and its cache)."""

from __future__ import annotations

import re
from pathlib import Path

from medgemma_models.errors import ConversionError

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

BASE_FILES = [
    "config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.model", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "README.md",
]
# adapter_model.bin is fetched only so that the plan can refuse it with an explanation.
ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"]


def is_repo_id(text: str) -> bool:
    """A string that is not an existing path and looks like 'owner/name'."""
    return not Path(text).expanduser().exists() and bool(_REPO_ID.fullmatch(text))


def fetch(repo_id: str, files: list[str], what: str) -> Path:
    """The local snapshot folder of `repo_id`; offline, a clear error naming what to pass instead."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    hint = f"download {repo_id} on a connected machine and pass its local folder as {what}"
    try:
        return Path(snapshot_download(repo_id, allow_patterns=files))
    except GatedRepoError as exc:
        raise ConversionError(f"{repo_id} is gated on the hub: accept its terms there and set HF_TOKEN") from exc
    except RepositoryNotFoundError as exc:
        raise ConversionError(f"{repo_id} was not found on the hub (private? set HF_TOKEN); or {hint}") from exc
    except LocalEntryNotFoundError as exc:
        raise ConversionError(f"{repo_id} is not in the hub cache and the hub cannot be reached (offline); {hint}") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ConversionError(f"could not download {repo_id} ({exc.__class__.__name__}); {hint}") from exc
