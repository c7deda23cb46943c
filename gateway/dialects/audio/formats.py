"""A transcript in each of OpenAI's response formats: json, text, srt, vtt, verbose_json."""

from __future__ import annotations

import msgspec
from starlette.responses import JSONResponse, PlainTextResponse, Response

from protocol.audio import Segment, Transcript

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


def _clock(seconds: float, decimal: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def srt(segments: list[Segment]) -> str:
    cues = [
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(cues)


def vtt(segments: list[Segment]) -> str:
    cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def verbose(transcript: Transcript, task: str, words: bool, segments: bool) -> dict:
    body = {
        "task": task,
        "language": transcript.language,
        "duration": round(transcript.duration, 2),
        "text": transcript.text.strip(),
    }
    if segments:
        body["segments"] = [
            {k: v for k, v in msgspec.structs.asdict(s).items() if k != "words"} for s in transcript.segments
        ]
    if words:
        body["words"] = [msgspec.structs.asdict(w) for s in transcript.segments for w in s.words]
    return body


def render(transcript: Transcript, fmt: str, task: str, granularities: list[str]) -> Response:
    if fmt == "text":
        return PlainTextResponse(transcript.text.strip() + "\n")
    if fmt == "srt":
        return PlainTextResponse(srt(transcript.segments), media_type="application/x-subrip")
    if fmt == "vtt":
        return PlainTextResponse(vtt(transcript.segments), media_type="text/vtt")
    if fmt == "verbose_json":
        # Segments come by default, as OpenAI sends them; asking for words alone leaves them out.
        segments = "segment" in granularities or not granularities
        return JSONResponse(verbose(transcript, task, "word" in granularities, segments))
    return JSONResponse({"text": transcript.text.strip()})
