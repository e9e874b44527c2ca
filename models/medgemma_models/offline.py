"""The one place that says what "offline" means for the libraries we start or import."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# huggingface_hub (and transformers through it) must never reach for the hub on its own.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1"}


def go_offline(environ: MutableMapping[str, str] | None = None) -> None:
    """Set the offline variables in `environ` (this process's environment by default).

    Call it before anything could import huggingface_hub: it reads them once, on import.
    """
    (os.environ if environ is None else environ).update(OFFLINE_ENV)
