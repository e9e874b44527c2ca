"""OpenAI's chat-completions shapes: a request read and checked into plain values, and the bodies
and stream chunks written back. No engine here, so every rule is testable on its own.

What the request says is read the way OpenAI's own API reads it: unknown fields are ignored, a
field of the wrong type is a 400 naming it. Reasoning goes in its own field, `reasoning_content`
(as llama-server and LM Studio name it), so `content` holds only the answer. Images come as
`image_url` parts holding `data:` URIs; a URL of any other kind is refused, never fetched.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..answer import AnswerStats
from ..images.decode import DecodedImage, decode_image
from ..images.limits import ImageError


class ApiError(Exception):
    """A request that gets an OpenAI-shaped error with this status."""

    KINDS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
             503: "server_error"}

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    @property
    def kind(self) -> str:
        return self.KINDS.get(self.status, "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ApiMessage:
    """One message of the request, as the prompt builder takes it (`conversation.ChatMessage`)."""

    role: str  # "user" or "model"
    text: str
    reasoning: str = ""
    image_ids: tuple[str, ...] = ()  # sha256 of each image part, decoded into `ChatRequest.images`
    meta: dict[str, Any] = field(default_factory=dict)  # the passages found for it (documents.passages)


@dataclass(frozen=True)
class ChatRequest:
    model: str | None
    system: str | None
    messages: tuple[ApiMessage, ...]
    stream: bool
    include_usage: bool
    think: bool | None  # None: the model's preset decides
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...]
    images: dict[str, DecodedImage] = field(default_factory=dict)  # the messages' image parts, by sha256
    collections: tuple[str, ...] = ()  # an extension: the document collections to answer from


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_value" if param else "invalid_request", param)


def _number(body: dict, name: str, kind: type, low: float, high: float) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise _bad(f"'{name}' must be {'an integer' if kind is int else 'a number'}", name)
    if not low <= value <= high:
        raise _bad(f"'{name}' must be between {low:g} and {high:g}", name)
    return kind(value)


def _content_of(content: Any, where: str, images: dict[str, DecodedImage]) -> tuple[str, tuple[str, ...]]:
    """A message's content: a string, or a list of text and image_url parts. Images are decoded
    into `images`; what comes back is the text and the sha256 of each image, in order."""
    if isinstance(content, str):
        return content, ()
    if content is None:
        return "", ()
    if not isinstance(content, list):
        raise _bad(f"{where}: 'content' must be a string or a list of parts", "messages")
    texts: list[str] = []
    ids: list[str] = []
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"{where}: each content part must be an object with a 'type'", "messages")
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise _bad(f"{where}: a text part needs a string 'text'", "messages")
            texts.append(part["text"])
        elif part["type"] == "image_url":
            decoded = _image_of(part.get("image_url"), f"{where} image {len(ids) + 1}")
            images[decoded.part.sha256] = decoded
            ids.append(decoded.part.sha256)
        else:
            raise _bad(f"{where}: content parts of type {part['type']!r} are not supported; send text and "
                       "image_url parts", "messages")
    return "".join(texts), tuple(ids)


def _image_of(value: Any, where: str) -> DecodedImage:
    """An image_url part's image, from a data: URI only: the app is offline and reads no path a request names."""
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise _bad(f"{where}: an image_url part needs a 'url'", "messages")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme != "data":
        raise _bad(f"{where}: only data: URIs are taken ({scheme or 'a relative'} URL refused): this app is offline "
                   "and opens no address or file a request names; send the image inline, base64-encoded", "messages")
    header, _, payload = url.partition(",")
    if ";base64" not in header.lower():
        raise _bad(f"{where}: the data: URI must be base64-encoded", "messages")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(f"{where}: the data: URI is not valid base64", "messages") from exc
    try:
        return decode_image(data, where)
    except ImageError as exc:
        raise _bad(str(exc), "messages") from exc


def read_chat_request(raw: bytes) -> ChatRequest:
    """Check a request body; ApiError(400) names the first problem."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", "invalid_json") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", "invalid_json")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("'model' must be a string", "model")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _bad("'messages' must be a non-empty list", "messages")
    system_parts: list[str] = []
    messages: list[ApiMessage] = []
    images: dict[str, DecodedImage] = {}
    for index, item in enumerate(raw_messages):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object", "messages")
        role = item.get("role")
        text, image_ids = _content_of(item.get("content"), where, images)
        if image_ids and role != "user":
            raise _bad(f"{where}: only user messages can carry images", "messages")
        if role in ("system", "developer"):
            if messages:  # Gemma has no system role: the formatter folds it into the first user turn
                raise _bad(f"{where}: a system message must come before the conversation", "messages")
            system_parts.append(text)
        elif role == "user":
            messages.append(ApiMessage("user", text, image_ids=image_ids))
        elif role == "assistant":
            reasoning = item.get("reasoning_content")
            messages.append(ApiMessage("model", text, reasoning if isinstance(reasoning, str) else ""))
        else:
            raise _bad(f"{where}: role {role!r} is not one of system, user, assistant", "messages")
    if not messages or messages[0].role != "user" or messages[-1].role != "user":
        raise _bad("the conversation must start and end with a user message", "messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("'stream' must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    max_tokens = _number(body, "max_completion_tokens", int, 1, 1 << 20)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", int, 1, 1 << 20)
    stop = body.get("stop")
    if isinstance(stop, str):
        stops: tuple[str, ...] = (stop,)
    elif stop is None:
        stops = ()
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        stops = tuple(stop)
    else:
        raise _bad("'stop' must be a string or a list of up to 4 strings", "stop")
    return ChatRequest(
        model=model, system="\n\n".join(system_parts) or None, messages=tuple(messages), stream=stream,
        include_usage=bool(options.get("include_usage", False)), think=_think(body),
        max_tokens=max_tokens, temperature=_number(body, "temperature", float, 0, 2),
        top_p=_number(body, "top_p", float, 0, 1), seed=_number(body, "seed", int, -(1 << 63), (1 << 63) - 1),
        stop=stops, images=images, collections=_collections(body))


def _collections(body: dict) -> tuple[str, ...]:
    names = body.get("collections")
    if names is None:
        return ()
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise _bad("'collections' must be a list of collection names", "collections")
    return tuple(names)


def _think(body: dict) -> bool | None:
    """Off for `reasoning_effort: "none"` or `chat_template_kwargs.enable_thinking: false`; else the preset's."""
    effort = body.get("reasoning_effort")
    kwargs = body.get("chat_template_kwargs")
    enable = kwargs.get("enable_thinking") if isinstance(kwargs, dict) else None
    if effort == "none" or enable is False:
        return False
    if enable is True or effort in ("minimal", "low", "medium", "high"):
        return True
    return None


def usage(stats: AnswerStats) -> dict[str, Any]:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.generated_tokens,
            "total_tokens": stats.prompt_tokens + stats.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.reused_tokens},
            "completion_tokens_details": {"reasoning_tokens": stats.reasoning_tokens}}


def finish_reason(stats: AnswerStats) -> str:
    # "cancelled" is ours (a stop from the server's side); OpenAI's clients know stop and length.
    return "length" if stats.finish_reason == "length" else "stop"


class Completion:
    """The ids and stamps one answer's response and chunks share."""

    def __init__(self, completion_id: str, model: str) -> None:
        self.id, self.model, self.created = completion_id, model, int(time.time())

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def message(self, answer: str, reasoning: str, stats: AnswerStats, extra: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": answer}
        if reasoning:
            message["reasoning_content"] = reasoning
        return {**self._head("chat.completion"), **extra,
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(stats)}],
                "usage": usage(stats)}

    def chunk(self, delta: dict[str, Any], finish: str | None = None, extra: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        return {**self._head("chat.completion.chunk"), **(extra or {}),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def usage_chunk(self, stats: AnswerStats) -> dict[str, Any]:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage(stats)}
