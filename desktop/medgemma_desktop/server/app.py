"""The routes: `/health`, `/v1/models` and `/v1/chat/completions`, on Starlette behind the `Guard`.

Starlette with uvicorn and sse-starlette: small, well kept, pure ASGI (so the guard sees every
request before a route does), and sse-starlette stops a stream when its client goes away.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from medgemma_models import emergency

from ..events import AnswerPiece, Failed, Finished, ReasoningPiece, RuntimeEvent
from .guard import Guard
from .openai_api import ApiError, ChatRequest, Completion, read_chat_request
from .service import ChatService


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def build_app(service: ChatService) -> Guard:
    """The ASGI app for `service`, guarded by its config."""

    async def health(request: Request) -> Response:
        served = service.served
        return JSONResponse({"status": "ok" if served is not None else "loading",
                             "model": served.id if served is not None else None})

    async def models(request: Request) -> Response:
        listed = service.models()
        return JSONResponse({"object": "list", "data": [_model(name, entry) for name, entry in listed.items()]})

    async def model(request: Request) -> Response:
        name = request.path_params["name"]
        entry = service.models().get(name)
        if entry is None:
            raise ApiError(404, f"the model {name!r} does not exist", "model_not_found", "model")
        return JSONResponse(_model(name, entry))

    async def chat_completions(request: Request) -> Response:
        # Off the event loop: decoding a request's images takes a moment, and other requests go on meanwhile.
        chat = await run_in_threadpool(read_chat_request, await request.body())
        chat, citations = await run_in_threadpool(service.with_documents, chat)
        served, events = await service.answer(chat)
        completion = Completion(f"chatcmpl-{uuid.uuid4().hex}", served.id)
        # Extensions, as top-level fields a client may ignore: the red-flag notice, and the sources used
        # (null when the request named no collection).
        extra = {"emergency_notice": _emergency_notice(chat), "citations": citations}
        if chat.stream:
            return EventSourceResponse(_stream(completion, chat, events, extra), sep="\n", ping=15)
        return await _whole(request, completion, events, extra)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        status = exc.status_code
        return error_response(ApiError(status, "no such endpoint" if status == 404 else str(exc.detail),
                                       "not_found" if status == 404 else None))

    app = Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ], exception_handlers={ApiError: api_error, HTTPException: http_error})
    return Guard(app, service.config)


def _emergency_notice(chat: ChatRequest) -> dict[str, str | None] | None:
    """The red-flag notice for the last user message (the question being answered), or None."""
    notice = emergency.check(chat.messages[-1].text)
    return notice.to_dict() if notice is not None else None


def _model(name: str, entry: Any) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "local", "title": entry.title}


async def _stream(completion: Completion, chat: ChatRequest, events: AsyncIterator[RuntimeEvent],
                  extra: dict[str, Any]) -> AsyncIterator[dict[str, str]]:
    """The answer as SSE chunks: `extra` (the emergency notice) in the first, reasoning in
    `delta.reasoning_content`, the answer in `delta.content`, then the finish reason, the usage if asked,
    and `[DONE]`."""
    try:
        yield {"data": json.dumps(completion.chunk({"role": "assistant", "content": ""}, extra=extra))}
        async for event in events:
            if isinstance(event, ReasoningPiece) and event.text:
                yield {"data": json.dumps(completion.chunk({"reasoning_content": event.text}))}
            elif isinstance(event, AnswerPiece) and event.text:
                yield {"data": json.dumps(completion.chunk({"content": event.text}))}
            elif isinstance(event, Finished):
                yield {"data": json.dumps(completion.chunk({}, _finish(event)))}
                if chat.include_usage:
                    yield {"data": json.dumps(completion.usage_chunk(event.stats))}
            elif isinstance(event, Failed):
                yield {"data": json.dumps(ApiError(500, f"the answer failed: {event.message}",
                                                   "generation_failed").body())}
        yield {"data": "[DONE]"}
    finally:
        await events.aclose()  # type: ignore[attr-defined]  # an async generator: cancels the job


def _finish(event: Finished) -> str:
    return "length" if event.stats.finish_reason == "length" else "stop"


async def _whole(request: Request, completion: Completion, events: AsyncIterator[RuntimeEvent],
                 extra: dict[str, Any]) -> Response:
    """The answer in one body; a client that hangs up first stops the generation."""
    answer: list[str] = []
    reasoning: list[str] = []
    outcome: list[RuntimeEvent] = []

    async def collect() -> None:
        async for event in events:
            if isinstance(event, ReasoningPiece):
                reasoning.append(event.text)
            elif isinstance(event, AnswerPiece):
                answer.append(event.text)
            elif isinstance(event, (Finished, Failed)):
                outcome.append(event)

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            continue

    collecting, watching = asyncio.ensure_future(collect()), asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait({collecting, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        collecting.cancel()
        # The collector must have left the generator before it is closed (it is "running" until then).
        await asyncio.gather(collecting, watching, return_exceptions=True)
        await events.aclose()  # type: ignore[attr-defined]
    if not outcome:
        return Response(status_code=499)  # nobody is listening; nginx's code for it
    last = outcome[-1]
    if isinstance(last, Failed):
        raise ApiError(500, f"the answer failed: {last.message}", "generation_failed")
    assert isinstance(last, Finished)
    return JSONResponse(completion.message("".join(answer).strip(), "".join(reasoning).strip(), last.stats, extra))
