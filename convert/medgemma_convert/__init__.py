"""medgemma-convert: merge LoRA adapters into Gemma and export verified, quantized GGUF files."""

from importlib import metadata

try:
    __version__ = metadata.version("medgemma-edge")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

CONVERTER_ID = f"medgemma-convert {__version__}"
