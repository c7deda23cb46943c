"""Audio in and out of the gateway with ffmpeg (Debian's `ffmpeg`; the scripts install it): uploads in any format
ffmpeg reads (wav, mp3, m4a, ogg, flac, webm, ...) become the 16 kHz mono PCM Whisper hears, and speech becomes
the format a client asked for. ffmpeg runs as a subprocess, so the event loop never decodes anything itself and
the worker's MLX thread never waits on a codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator

from gateway.errors import APIError
from protocol import ErrorCode
from protocol.audio import WHISPER_SAMPLE_RATE

BYTES_PER_SAMPLE = 2  # s16le
# response_format -> (ffmpeg output arguments, media type); wav and pcm are written here, without ffmpeg.
ENCODINGS = {
    "mp3": (["-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3"], "audio/mpeg"),
    "opus": (["-c:a", "libopus", "-b:a", "32k", "-f", "ogg"], "audio/ogg"),
    "aac": (["-c:a", "aac", "-b:a", "64k", "-f", "adts"], "audio/aac"),
    "flac": (["-c:a", "flac", "-f", "flac"], "audio/flac"),
}
MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm"} | {k: v[1] for k, v in ENCODINGS.items()}
PIPE_CHUNK = 64 * 1024


def _ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise APIError(ErrorCode.INTERNAL, "ffmpeg is not installed on the gateway's host (the scripts install it)")
    return path


async def decode_upload(upload, max_seconds: float) -> bytes:
    """The uploaded file (a Starlette UploadFile) as 16 kHz mono s16le PCM. A file ffmpeg cannot read as audio is a
    400; audio longer than `max_seconds` is a 400 too (decoding stops just past the limit)."""
    with tempfile.NamedTemporaryFile(prefix="mlxs-upload-") as spool:  # a file, so m4a/mp4 can seek their index
        await upload.seek(0)
        while chunk := await upload.read(PIPE_CHUNK):
            spool.write(chunk)
        spool.flush()
        proc = await asyncio.create_subprocess_exec(
            _ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", spool.name,
            "-t", f"{max_seconds + 0.05:.2f}", "-vn", "-ac", "1", "-ar", str(WHISPER_SAMPLE_RATE),
            "-f", "s16le", "pipe:1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        pcm, errors = await proc.communicate()
    if proc.returncode != 0 or not pcm:
        lines = errors.decode(errors="replace").replace(spool.name, "file").strip().splitlines()  # no server paths
        reason = lines[-1] if lines else "it holds no audio stream"
        raise APIError(ErrorCode.INVALID_REQUEST, f"The file could not be decoded as audio: {reason}", param="file")
    seconds = len(pcm) / BYTES_PER_SAMPLE / WHISPER_SAMPLE_RATE
    if seconds > max_seconds:
        raise APIError(
            ErrorCode.INVALID_REQUEST,
            f"The audio is longer than this server's limit of {max_seconds:.0f} seconds",
            param="file",
        )
    return pcm


def wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """A 16-bit mono WAV header; `data_bytes` None (a stream of unknown length) writes the maximum sizes, as
    streaming WAV writers do, which players read as 'until the end'."""
    size = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    return (
        b"RIFF" + struct.pack("<I", riff) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * BYTES_PER_SAMPLE, BYTES_PER_SAMPLE, 16)
        + b"data" + struct.pack("<I", size)
    )  # fmt: skip


async def encode_stream(pcm: AsyncIterator[bytes], sample_rate: int, fmt: str) -> AsyncIterator[bytes]:
    """`pcm` (mono s16le chunks) encoded as `fmt`, yielded as the encoder produces it."""
    if fmt == "pcm":
        async for chunk in pcm:
            yield chunk
        return
    if fmt == "wav":
        yield wav_header(sample_rate, None)
        async for chunk in pcm:
            yield chunk
        return
    args, _ = ENCODINGS[fmt]
    proc = await asyncio.create_subprocess_exec(
        _ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error",
        "-f", "s16le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0", *args, "pipe:1",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip

    async def feed() -> None:
        try:
            async for chunk in pcm:
                proc.stdin.write(chunk)
                await proc.stdin.drain()
        finally:
            with contextlib.suppress(ConnectionError):
                proc.stdin.close()

    feeding = asyncio.create_task(feed())
    try:
        while out := await proc.stdout.read(PIPE_CHUNK):
            yield out
        await feeding  # re-raises what went wrong upstream (a worker error) once the encoder has flushed
    finally:
        feeding.cancel()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()


async def encode_whole(pcm: bytes, sample_rate: int, fmt: str) -> bytes:
    """A complete answer; a WAV gets its true sizes in the header."""
    if fmt == "wav":
        return wav_header(sample_rate, len(pcm)) + pcm

    async def once():
        yield pcm

    return b"".join([chunk async for chunk in encode_stream(once(), sample_rate, fmt)])
