"""Upstream QwenLong-CPRS's API (``src/api_utils/run_api.py``): its request envelope in, its response envelope out.

Request::

    {"header": {"request_id": "..."},
     "payload": {"input": {"messages": [{"role": "system", "content": INSTRUCTION},
                                        {"role": "user", "content": QUERY},
                                        {"role": "context", "content": CONTEXT}]},
                 "parameters": {"min_keyword_len": 4, "complete_sentence": false, "return_offset": false}}}

Response: the request echoed back, with ``payload.output = {"text": [kept span, ...]}`` (items
``[text, start, end]`` with ``return_offset``), ``payload.usage = {"input_tokens": N}`` and
``header.status_code/status_name/status_message/finished``.

Spans are read as upstream reads them (``CompressionRequest.upstream_spans``, see :mod:`cprs_core.upstream_spans`):
texts are stripped, offsets are not; ``complete_sentence`` widens each span on its own (overlaps kept).
"""

from __future__ import annotations

from typing import Any

from cprs_core import CompressionRequest, CompressionResult

from .errors import ApiError
from .schemas import UpstreamParameters, UpstreamRequest

PUNCTUATION_ONLY = "（），。！"
"""Upstream drops kept spans whose whole text is a piece of this string."""


def to_request(body: UpstreamRequest) -> CompressionRequest:
    """The compression upstream would run: token spans, ``min_keyword_len`` k keeps spans of k+1 tokens or more,
    ``complete_sentence`` widens each span to its sentence delimiters, and ``split_with_sent`` (on by default)
    cuts the windows of a context holding CJK at sentence ends; as upstream, an empty query or system prompt is
    accepted (an empty system prompt means the default ``fact`` instruction)."""
    instruction, query, context = (message.content for message in body.payload.input.messages)
    parameters = body.payload.parameters
    return CompressionRequest(
        context=context,
        query=query,
        instruction=instruction if instruction.strip() else None,
        granularity="sentence" if parameters.complete_sentence else "token",
        min_span_tokens=parameters.min_keyword_len + 1,
        sentence_windows=None if parameters.split_with_sent else False,
        upstream_spans=True,
        allow_empty_query=True,
    )


def success(data: dict[str, Any], result: CompressionResult, parameters: UpstreamParameters) -> dict[str, Any]:
    """Upstream's success answer: ``data`` (the request as sent) with output, usage and a success header."""
    kept = [(span.text.strip(), span) for span in result.spans]
    texts: list[Any] = [
        [text, span.start, span.end] if parameters.return_offset else text
        for text, span in kept
        if text not in PUNCTUATION_ONLY
    ]
    header, payload = _parts(data)
    payload["output"] = {"text": texts}
    payload["usage"] = {"input_tokens": result.original_tokens}
    header.update(status_code=200, status_name="Success", status_message="Success", finished=True)
    return {**data, "header": header, "payload": payload}


def failure(data: Any, error: ApiError) -> dict[str, Any]:
    """Upstream's error answer: the request (when it was a JSON object) with the error in its header."""
    request = data if isinstance(data, dict) else {}
    header, payload = _parts(request)
    header.update(status_code=error.status, status_name=error.kind, status_message=error.message)
    payload["output"] = {"is_match": False}
    payload["usage"] = {"input_tokens": -1, "output_tokens": -1}
    return {**request, "header": header, "payload": payload}


def _parts(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copies of the header and payload objects (empty when missing or not objects)."""
    header, payload = data.get("header"), data.get("payload")
    return (dict(header) if isinstance(header, dict) else {}), (dict(payload) if isinstance(payload, dict) else {})
