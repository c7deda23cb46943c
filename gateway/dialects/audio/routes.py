"""OpenAI's audio API as a dialect: POST /v1/audio/transcriptions and /v1/audio/translations (multipart uploads to
an stt model), POST /v1/audio/speech (text to a tts model). Also under /api/v1. Errors are OpenAI's shape.

Uploads are decoded here (codec.py) before any model is involved, so a file that is not audio, too large or too
long is refused at once; answers are encoded here too, streamed as the worker produces them.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import msgspec
from msgspec import Meta
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.core import http as core
from gateway.core.generation import Generation
from gateway.dialects.audio.codec import MEDIA_TYPES, decode_upload, encode_stream, encode_whole
from gateway.dialects.audio.formats import FORMATS, render
from gateway.dialects.bounds import Seed
from gateway.dialects.dialect import Dialect, post
from gateway.dialects.openai_common import OPENAI_WIRE
from gateway.errors import APIError
from gateway.request_body import decode_request
from gateway.sse import sse
from protocol import ErrorCode
from protocol.audio import AudioChunk, SpeechDone, SpeechRequest, TranscribeRequest, Transcript

MAX_SPEECH_CHARS = 4096  # OpenAI's limit on `input`


def _invalid(message: str, param: str) -> APIError:
    return APIError(ErrorCode.INVALID_REQUEST, message, param=param)


def model_for(request: Request, asked: str | None, fallback: str) -> str:
    """The model a request names, else its service's default, else this endpoint's default."""
    service = getattr(request.state, "service", None)
    return asked or getattr(service, "default_model", None) or fallback


# -- transcriptions and translations -------------------------------------------------------------------------


def _field(form, name: str) -> str | None:
    value = form.get(name)
    if isinstance(value, UploadFile):
        raise _invalid(f"'{name}' must be a form field, not a file", name)
    return value if value not in (None, "") else None


def _flag(form, name: str) -> bool:
    value = (_field(form, name) or "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise _invalid(f"'{name}' must be true or false", name)
    return value in ("true", "1")


async def _read_form(request: Request, task: str) -> tuple[TranscribeRequest, str, str, list[str], bool]:
    settings = request.app.state.settings
    form = await request.form(max_files=1, max_fields=32)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise _invalid("Upload the audio as the multipart file field 'file'", "file")
    if upload.size is not None and upload.size > settings.max_audio_bytes:
        raise APIError(
            ErrorCode.REQUEST_TOO_LARGE,
            f"The file is {upload.size} bytes; this server takes audio files up to {settings.max_audio_bytes} bytes",
        )
    fmt = _field(form, "response_format") or "json"
    if fmt not in FORMATS:
        raise _invalid(f"response_format must be one of {', '.join(FORMATS)}", "response_format")
    granularities = form.getlist("timestamp_granularities[]") or form.getlist("timestamp_granularities")
    if any(g not in ("segment", "word") for g in granularities):
        raise _invalid("timestamp_granularities[] may hold 'segment' and 'word'", "timestamp_granularities[]")
    if granularities and fmt != "verbose_json":
        raise _invalid("timestamp_granularities[] needs response_format verbose_json", "timestamp_granularities[]")
    try:
        temperature = float(_field(form, "temperature") or 0.0)
    except ValueError:
        raise _invalid("temperature must be a number", "temperature") from None
    if not 0.0 <= temperature <= 1.0:
        raise _invalid("temperature must be between 0 and 1", "temperature")
    stream = _flag(form, "stream")
    if stream and fmt not in ("json", "text"):
        raise _invalid("stream=true sends text deltas: use response_format json or text", "stream")
    pcm = await decode_upload(upload, settings.max_audio_seconds)
    message = TranscribeRequest(
        request_id=f"{'trsc' if task == 'transcribe' else 'trsl'}-{uuid.uuid4().hex}",
        pcm=pcm,
        task=task,
        language=_field(form, "language") if task == "transcribe" else None,
        prompt=_field(form, "prompt"),
        temperature=temperature,
        word_timestamps="word" in granularities,
    )
    model = model_for(request, _field(form, "model"), settings.transcription_model)
    return message, model, fmt, granularities, stream


async def _transcript(generation: Generation) -> Transcript:
    async for event in generation:  # TranscriptParts, then the Transcript (an error raises APIError)
        if isinstance(event, Transcript):
            return event
    raise AssertionError("a transcription ends with its Transcript or an error")


async def _text_events(generation: Generation):
    """OpenAI's transcription stream: a `transcript.text.delta` per finished window, then `transcript.text.done`."""
    async for event in generation:
        if isinstance(event, Transcript):
            yield sse({"type": "transcript.text.done", "text": event.text.strip()})
            yield b"data: [DONE]\n\n"
            return
        yield sse({"type": "transcript.text.delta", "delta": "".join(s.text for s in event.segments)})


async def _transcribe(request: Request, task: str) -> Response:
    message, model, fmt, granularities, stream = await _read_form(request, task)
    if stream:
        return await core.stream(request, message, model, _text_events, OPENAI_WIRE)
    generation = await core.start(request, message, model)
    try:
        transcript = await core.caller_of(request).unless_gone(_transcript(generation))
    finally:
        generation.release()
    return render(transcript, fmt, task, granularities)


async def transcriptions(request: Request) -> Response:
    return await _transcribe(request, "transcribe")


async def translations(request: Request) -> Response:
    """Speech in any language the model knows, as English text (an English-only model transcribes)."""
    return await _transcribe(request, "translate")


# -- speech ---------------------------------------------------------------------------------------------------


class SpeechBody(msgspec.Struct, kw_only=True):
    input: Annotated[str, Meta(min_length=1, max_length=MAX_SPEECH_CHARS)]
    model: str | None = None
    voice: str | None = None
    response_format: Literal["mp3", "wav", "opus", "flac", "aac", "pcm"] = "mp3"
    speed: Annotated[float, Meta(ge=0.25, le=4.0)] = 1.0
    seed: Seed | None = None  # beyond OpenAI: repeatable audio (the vocoders sample noise)
    stream: bool = False  # send the audio as it is produced (chunked), instead of whole with its length
    stream_format: Literal["audio", "sse"] | None = None  # OpenAI's; "audio" streams like stream=true
    instructions: str | None = None  # OpenAI's; the models served here take no instructions


async def _pcm(generation: Generation):
    async for event in generation:  # AudioChunks, then SpeechDone (an error raises APIError)
        if isinstance(event, AudioChunk):
            yield event.pcm


async def speech(request: Request) -> Response:
    body = decode_request(await request.body(), SpeechBody)
    if body.stream_format == "sse":
        raise _invalid("stream_format 'sse' is not served; use 'audio' (or stream: true)", "stream_format")
    message = SpeechRequest(
        request_id=f"spch-{uuid.uuid4().hex}", text=body.input, voice=body.voice, speed=body.speed, seed=body.seed
    )
    model = model_for(request, body.model, request.app.state.settings.speech_model)
    generation = await core.start(request, message, model)
    first = generation.first
    rate = first.sample_rate if isinstance(first, AudioChunk | SpeechDone) else 0
    media_type = MEDIA_TYPES[body.response_format]
    headers = {"X-Sample-Rate": str(rate)}
    if body.stream or body.stream_format == "audio":

        async def chunks():
            try:
                async for out in encode_stream(_pcm(generation), rate, body.response_format):
                    yield out
            finally:
                generation.release()

        return StreamingResponse(chunks(), media_type=media_type, headers=headers)
    try:
        pcm = b"".join(await core.caller_of(request).unless_gone(_collect(generation)))
    finally:
        generation.release()
    return Response(await encode_whole(pcm, rate, body.response_format), media_type=media_type, headers=headers)


async def _collect(generation: Generation) -> list[bytes]:
    return [chunk async for chunk in _pcm(generation)]


DIALECT = Dialect(
    name="openai-audio",
    routes=[
        *post("/audio/transcriptions", transcriptions),
        *post("/audio/translations", translations),
        *post("/audio/speech", speech),
    ],
)
