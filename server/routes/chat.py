"""``POST /v1/chat/completions``: OpenAI's chat shape over the pipeline, streamed as server-sent events on request."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from pipeline.errors import GeneratorError, RagError
from pipeline.render import answer_to_dict
from pipeline.types import Answer
from server.errors import ApiError
from server.schemas import ChatRequest
from server.service import App, authorize, server_timing

logger = logging.getLogger(__name__)

router = APIRouter(tags=["pipeline"], dependencies=[Depends(authorize)])


@router.post("/v1/chat/completions")
def chat_completions(body: ChatRequest, app: App, request: Request, response: Response):
    """OpenAI's chat completions over the pipeline: the last user message is retrieved, reranked and
    answered by the config's generator. ``rag`` in the reply (in the last chunk when streaming) holds
    the citations, the numbered passages and the timings; streamed pieces are the model's raw text."""
    question = next((m.text for m in reversed(body.messages) if m.role == "user"), "")
    query = app.check_query(question)
    top_k = app.check_top_k(body.top_k)
    served, pipe = app.pipeline(body.model if body.model in app.pipelines.served else None, body.collection, request)
    if pipe.config.generator is None:
        raise ApiError(400, "unsupported", f"config {served.name!r} has no generator: section (docs/answers.md)")
    result = pipe.ask(query, top_k, body.top_n, generate=False)
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": ident, "created": created, "model": served.name}

    def usage(answer: Answer) -> dict[str, int]:
        total = answer.prompt_tokens + answer.completion_tokens
        return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                "total_tokens": total}

    def rag(answer: Answer) -> dict[str, Any]:
        return {**answer_to_dict(answer), "index_version": pipe.version,
                "timings_ms": {k: round(v * 1000, 2) for k, v in {**result.timings, **answer.timings}.items()}}

    if not body.stream:
        answered = pipe.answer(result, body.answer_tokens)
        app.metrics.observe_timings(answered.timings)
        response.headers["Server-Timing"] = server_timing(answered.timings)
        answer = answered.answer
        return {**head, "object": "chat.completion", "usage": usage(answer), "rag": rag(answer), "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer.text},
             "finish_reason": answer.finish_reason or "stop"}]}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        data = {**head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def events():
        yield chunk({"role": "assistant", "content": ""})
        try:
            for item in pipe.stream_answer(result, body.answer_tokens):
                if isinstance(item, Answer):
                    yield chunk({}, item.finish_reason or "stop", rag=rag(item))
                    if (body.stream_options or {}).get("include_usage"):
                        data = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage(item)}
                        yield f"data: {json.dumps(data)}\n\n"
                else:
                    yield chunk({"content": item})
        except RagError as exc:  # the status is sent already: report in the stream, as OpenAI does
            logger.warning("answer failed: %s", exc)
            kind = "generator_error" if isinstance(exc, GeneratorError) else "pipeline_error"
            yield f"data: {json.dumps({'error': {'type': kind, 'message': str(exc)}})}\n\n"
        yield "data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "Server-Timing": server_timing(result.timings)}  # retrieval's, so far
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
