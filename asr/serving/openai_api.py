"""The OpenAI-compatible routes of ``asr serve``: audio transcriptions and the model list.

``POST /v1/audio/transcriptions`` (multipart ``file``; ``response_format`` json | text | srt
| vtt | verbose_json; ``timestamp_granularities[]=word``) and ``GET /v1/models``, so the
``openai`` package and curl work with ``base_url`` pointed here. Uploads are spooled, limited
and queued by :class:`asr.serving.context.ServerContext`.

OpenAI's other fields are accepted and ignored, as they mean nothing to a CTC model: ``model``
(any name; the server has one model), ``prompt`` (no language-model context to prime: a beam
search's word LM is fixed when the server starts), ``temperature`` (decoding is greedy or a
beam search, never sampled), ``chunking_strategy`` and ``include[]``. ``stream=true`` gets
400: the answer comes whole, and a client asking for server-sent events would not parse it.
"""

from __future__ import annotations

import math
import time
import zlib
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from asr.inference.results import Transcription
from asr.inference.writers import render, subtitle_cues, word_record
from asr.serving.context import ApiError, ServerContext, Upload, audio_error, error_response
from asr.serving.worker import transcribe_upload

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")


def _field(fields: dict[str, list[str]], name: str, default: str) -> str:
    values = fields.get(name)
    return values[-1].strip() if values else default


def _segments(result: Transcription) -> list[dict]:
    """Whisper-style segments: the subtitle cues, with the numbers we can honestly give."""
    segments: list[dict] = []
    words = list(result.words)
    position = 0
    for number, cue in enumerate(subtitle_cues(result.words)):
        count = len(cue.text.split(" "))
        cue_words = words[position:position + count]
        position += count
        text = cue.text.encode("utf-8")
        segments.append({
            "id": number, "seek": 0, "start": cue.start, "end": cue.end, "text": cue.text,
            "tokens": [], "temperature": 0.0,
            # mean log of the words' CTC posteriors (whisper: mean token log-probability)
            "avg_logprob": round(sum(math.log(max(w.confidence, 1e-10)) for w in cue_words)
                                 / max(len(cue_words), 1), 4),
            "compression_ratio": round(len(text) / max(len(zlib.compress(text)), 1), 4),  # as whisper computes it
        })
    return segments


def format_result(result: Transcription, response_format: str, granularities: list[str]) -> Response:
    """The transcription in one of OpenAI's response formats."""
    if response_format == "json":
        return JSONResponse({"text": result.text})
    if response_format == "verbose_json":
        body: dict[str, Any] = {"task": "transcribe", "language": "english", "duration": round(result.duration, 3),
                                "text": result.text, "segments": _segments(result)}
        if "word" in granularities:
            body["words"] = [word_record(w) for w in result.words]
        if result.warnings:
            body["warnings"] = list(result.warnings)
        return JSONResponse(body)
    media = "text/vtt" if response_format == "vtt" else "text/plain"
    return PlainTextResponse(render(result, response_format), media_type=media)


def _form_options(upload: Upload) -> tuple[str, list[str]]:
    """The request's response_format and timestamp granularities; 400 for values we do not serve."""
    response_format = _field(upload.fields, "response_format", "json")
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(400, f"response_format {response_format!r} is not one of {', '.join(RESPONSE_FORMATS)}",
                       "invalid_value", param="response_format")
    granularities = [g.strip() for key in ("timestamp_granularities[]", "timestamp_granularities")
                     for g in upload.fields.get(key, [])]
    unknown = [g for g in granularities if g not in GRANULARITIES]
    if unknown:
        raise ApiError(400, f"timestamp_granularities {unknown[0]!r} is not one of word, segment",
                       "invalid_value", param="timestamp_granularities")
    if _field(upload.fields, "stream", "false").lower() not in ("false", "0", ""):
        raise ApiError(400, "stream=true is not supported: the transcription comes as one answer; "
                       "leave stream out or send stream=false", "unsupported_value", param="stream")
    language = _field(upload.fields, "language", "en").lower()
    if language not in ("en", "english", ""):
        raise ApiError(400, f"language {language!r} is not supported; this model transcribes English (en)",
                       "invalid_value", param="language")
    return response_format, granularities


def add_openai_routes(app: FastAPI, context: ServerContext) -> None:
    options = context.options
    created = int(time.time())

    def model_card() -> dict:
        return {"id": options.model_name, "object": "model", "created": created, "owned_by": "asr"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Response:
        if model_id != options.model_name:
            return error_response(404, f"model {model_id!r} not found; this server has {options.model_name!r}",
                                  "model_not_found", param="model")
        return JSONResponse(model_card())

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        """OpenAI's transcription endpoint: multipart ``file``, ``response_format``,
        ``timestamp_granularities[]``, ``language`` (English only). ``model``, ``prompt``,
        ``temperature``, ``chunking_strategy`` and ``include[]`` are accepted and ignored (a CTC
        model has no prompt and does not sample); ``stream=true`` is refused with 400."""
        form: dict[str, Any] = {}

        def check(upload: Upload) -> None:  # before the work is queued: a bad form costs no recognition
            form["response_format"], form["granularities"] = _form_options(upload)

        upload, result = await context.run_upload(request, transcribe_upload, check)
        if not result.ok:
            raise audio_error(upload, result.error)
        return format_result(result, form["response_format"], form["granularities"])
