"""The errors a user sees. Each message is one line that names the problem.

Only the CLIs and the GUI turn these into exit codes and dialogs; the core never prints.
"""


class MedGemmaError(Exception):
    """Base of every error meant for the user rather than for a traceback."""


class ModelFileError(MedGemmaError):
    """A file that is not a usable GGUF model: missing, truncated, corrupt or of another kind."""


class StoreError(MedGemmaError):
    """The local model store could not provide a model."""


class OutputError(MedGemmaError):
    """An output file cannot be written where it was asked for."""


class ConversionError(MedGemmaError):
    """A conversion cannot go ahead with the inputs given."""


class AdapterError(ConversionError):
    """A LoRA adapter that does not fit the base or is of an unsupported kind."""


class ModelLoadError(MedGemmaError):
    """llama.cpp could not load a model."""


class PromptTooLongError(MedGemmaError):
    """A prompt that does not fit the model's context even after leaving out earlier turns."""
