"""The GGUF vocabulary of a Gemma checkpoint, as llama.cpp's own converter writes it.

`tokenizer.model` (SentencePiece) is preferred, as in llama.cpp's Gemma converters; a folder with only
`tokenizer.json` gets the same "llama" (SentencePiece-style) vocabulary built from the BPE model,
with each merged token scored by its merge rank so llama.cpp's tokenizer merges in the same order.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from medgemma_models.errors import ConversionError

END_OF_TURN = "<end_of_turn>"
_SPECIAL_TYPES = ("bos", "eos", "unk", "pad")
_WORD_SPACE = "\u2581"  # SentencePiece's visible space


@dataclass(frozen=True)
class Vocab:
    source: str  # "tokenizer.model" or "tokenizer.json"
    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    special_ids: dict[str, int] = field(default_factory=dict)
    add_special: dict[str, bool] = field(default_factory=dict)
    chat_template: Any = None

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        """Write the tokenizer keys in the order llama.cpp's converter does."""
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(self.tokens)
        writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        for typ, token_id in self.special_ids.items():
            getattr(writer, f"add_{typ}_token_id")(token_id)
        for typ, value in self.add_special.items():
            handler = getattr(writer, f"add_add_{typ}_token", None)
            if handler is not None:
                handler(value)
        if self.chat_template is not None:
            writer.add_chat_template(self.chat_template)
        writer.add_add_space_prefix(False)


def load_vocab(folder: Path, vocab_size: int | None) -> Vocab:
    """The vocabulary of an HF folder; `vocab_size` (from config.json) pads or caps it like llama.cpp."""
    # A quarter-million new strings and numbers set off Python's cycle collector over and over
    # (half a second); none of them can form a cycle.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_vocab(folder, vocab_size)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        # Tokenizer JSON of an unexpected shape (or nested past the parser's depth), here or in gguf-py.
        problem = "JSON nested too deeply" if isinstance(exc, RecursionError) else f"{type(exc).__name__}: {exc}"
        raise ConversionError(f"unreadable tokenizer files in {folder}: {' '.join(problem.split())}") from exc
    finally:
        if enabled:
            gc.enable()


def _load_vocab(folder: Path, vocab_size: int | None) -> Vocab:
    if (folder / "tokenizer.model").is_file():
        tokens, scores, types = _sentencepiece(folder / "tokenizer.model", vocab_size)
        source = "tokenizer.model"
    elif (folder / "tokenizer.json").is_file():
        tokens, scores, types = _tokenizer_json(folder / "tokenizer.json", vocab_size)
        source = "tokenizer.json"
    else:
        raise ConversionError(f"no tokenizer in {folder}: expected tokenizer.model or tokenizer.json")
    _apply_added_tokens(folder, tokens, scores, types)
    special = gguf.SpecialVocab(folder, n_vocab=len(tokens))
    ids = dict(special.special_token_ids)
    _fill_special_ids(folder, tokens, ids)
    return Vocab(source, tokens, scores, types, ids, dict(special.add_special_token), special.chat_template)


def _sentencepiece(path: Path, vocab_size: int | None) -> tuple[list[bytes], list[float], list[int]]:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as exc:
        raise ConversionError(f"corrupt tokenizer.model in {path.parent}: {exc}") from exc
    n = vocab_size or sp.vocab_size()
    tokens = [f"[PAD{i}]".encode() for i in range(n)]
    scores = [-10000.0] * n
    types = [gguf.TokenType.UNUSED.value] * n
    for i in range(min(n, sp.vocab_size())):
        if sp.IsUnknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif sp.IsControl(i):
            kind = gguf.TokenType.CONTROL
        elif sp.IsUnused(i):
            kind = gguf.TokenType.UNUSED
        elif sp.IsByte(i):
            kind = gguf.TokenType.BYTE
        else:
            kind = gguf.TokenType.NORMAL
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = sp.GetScore(i)
        types[i] = kind.value
    return tokens, scores, types


def _tokenizer_json(path: Path, vocab_size: int | None) -> tuple[list[bytes], list[float], list[int]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
        vocab: dict[str, int] = model["vocab"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConversionError(f"corrupt tokenizer.json in {path.parent}: {exc}") from exc
    if model.get("type") != "BPE":
        raise ConversionError(f"tokenizer.json in {path.parent} is a {model.get('type')} model; Gemma uses BPE")
    # A merged token's score is minus its merge rank: llama.cpp's SentencePiece-style tokenizer
    # merges the highest-scoring pair first, which is the BPE merge order.
    rank: dict[str, int] = {}
    for i, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, i)
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    # Ids past config.json's vocab_size have no embedding row; llama.cpp's converter ignores them too.
    n = vocab_size or max(max(vocab.values(), default=-1), max(added, default=-1)) + 1
    tokens = [f"[PAD{i}]".encode() for i in range(n)]
    scores = [-10000.0] * n
    types = [gguf.TokenType.UNUSED.value] * n
    unk = model.get("unk_token")
    for text, i in vocab.items():
        if i >= n:
            continue
        tokens[i] = text.encode("utf-8")
        if text == unk:
            types[i] = gguf.TokenType.UNKNOWN.value
            scores[i] = 0.0
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types[i] = gguf.TokenType.BYTE.value
            scores[i] = 0.0
        else:
            types[i] = gguf.TokenType.NORMAL.value
            scores[i] = -float(rank.get(text, 0))
    for i, token in added.items():
        if i >= n:
            continue
        tokens[i] = token["content"].encode("utf-8")
        scores[i] = 0.0
        types[i] = (gguf.TokenType.CONTROL if token.get("special") else gguf.TokenType.USER_DEFINED).value
    return tokens, scores, types


def _apply_added_tokens(folder: Path, tokens: list[bytes], scores: list[float], types: list[int]) -> None:
    """added_tokens.json and tokenizer_config.json's added_tokens_decoder, as llama.cpp applies them."""
    added_file = folder / "added_tokens.json"
    if added_file.is_file():
        for text, i in json.loads(added_file.read_text(encoding="utf-8")).items():
            if i < len(tokens):
                tokens[i], scores[i], types[i] = text.encode("utf-8"), -1000.0, gguf.TokenType.USER_DEFINED.value
    config = _tokenizer_config(folder)
    for key, token in config.get("added_tokens_decoder", {}).items():
        i = int(key)
        if i >= len(tokens):
            continue
        text: str = token["content"]
        if token.get("special") or _looks_special(text):
            types[i] = gguf.TokenType.CONTROL.value
        else:
            text = text.replace(_WORD_SPACE, " ")  # llama.cpp expects user-defined tokens pre-normalized
            types[i] = gguf.TokenType.USER_DEFINED.value
        scores[i] = -1000.0
        tokens[i] = text.encode("utf-8")


def _looks_special(text: str) -> bool:
    # The same heuristic as llama.cpp: some Gemma control tokens are not flagged special.
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def _fill_special_ids(folder: Path, tokens: list[bytes], ids: dict[str, int]) -> None:
    """Special ids that gguf.SpecialVocab could not resolve (no tokenizer.json), found by their text."""
    config = _tokenizer_config(folder)
    index = {t: i for i, t in enumerate(tokens)}
    for typ in _SPECIAL_TYPES:
        entry = config.get(f"{typ}_token")
        text = entry.get("content") if isinstance(entry, dict) else entry
        if typ not in ids and isinstance(text, str) and text.encode("utf-8") in index:
            ids[typ] = index[text.encode("utf-8")]
    # <end_of_turn> ends a model turn: as the EOT token every runtime stops on it.
    eot = index.get(END_OF_TURN.encode("utf-8"))
    if eot is not None:
        ids.setdefault("eot", eot)


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConversionError(f"corrupt {path}: {exc}") from exc
