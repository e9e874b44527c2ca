"""JSON from input files (configs, indexes, safetensors headers), failing with one line that names the file.

A hostile file can nest arrays deep enough to exhaust Python's recursion limit inside the parser:
that is a corrupt input too, not a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medgemma_models.errors import ConversionError


def parse_json(data: str | bytes, where: str, error: type[ConversionError] = ConversionError) -> Any:
    """The value of `data`; anything unreadable raises `error` naming `where`."""
    try:
        return json.loads(data)
    except RecursionError:
        raise error(f"corrupt {where}: its JSON is nested too deeply") from None
    except ValueError as exc:  # also UnicodeDecodeError and ints too long to convert
        raise error(f"corrupt {where}: {exc}") from exc


def read_json_object(path: Path, error: type[ConversionError] = ConversionError) -> dict[str, Any]:
    """The JSON object in `path`; a file that is unreadable or not an object raises `error`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from exc
    value = parse_json(data, str(path), error)
    if not isinstance(value, dict):
        raise error(f"corrupt {path}: not a JSON object")
    return value
