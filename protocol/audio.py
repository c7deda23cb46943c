"""Data plane for speech models: transcription (type stt) and text-to-speech (type tts). Every message carries
`request_id`.

gateway -> worker: TranscribeRequest or SpeechRequest
worker -> gateway: TranscribeRequest: TranscriptPart* (one per 30 s window that produced text), then Transcript;
                   SpeechRequest: AudioChunk* (as the model produces them), then SpeechDone;
                   or a GenerationError (see protocol.generation) in place of the rest.
Audio crosses the wire as raw PCM: mono, signed 16-bit little-endian, at the rate the message states. The gateway
decodes uploads and encodes answers (ffmpeg), so the worker's one MLX thread never waits on a codec.
"""

from __future__ import annotations

import msgspec

from protocol.codec import Message

WHISPER_SAMPLE_RATE = 16_000  # what every Whisper model hears


class Word(msgspec.Struct, frozen=True, kw_only=True):
    word: str
    start: float
    end: float
    probability: float = 0.0


class Segment(msgspec.Struct, frozen=True, kw_only=True):
    """A stretch of the transcript with its times in seconds from the start of the audio (OpenAI's verbose_json)."""

    id: int
    start: float
    end: float
    text: str
    tokens: list[int] = []
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: list[Word] = []  # with word timestamps


class TranscribeRequest(Message, tag="transcribe"):
    request_id: str
    pcm: bytes  # the whole upload, decoded to 16 kHz mono s16le
    task: str = "transcribe"  # or "translate": speech in any language, text in English
    language: str | None = None  # an ISO-639-1 code; None: detected (multilingual models) or English
    prompt: str | None = None  # text the first window is conditioned on (spellings, style)
    temperature: float = 0.0  # 0: greedy, falling back to higher temperatures on repetitive or unlikely output
    word_timestamps: bool = False
    trace_id: str | None = None  # the client's X-Request-ID, for the worker's log lines


class TranscriptPart(Message, tag="transcript_part"):
    """The segments of one finished window, sent as soon as it is done (for streaming)."""

    request_id: str
    segments: list[Segment]


class Transcript(Message, tag="transcript"):
    request_id: str
    text: str
    language: str
    duration: float  # seconds of audio transcribed
    segments: list[Segment]
    processing_seconds: float = 0.0  # the model's own time on it, queueing excluded


class SpeechRequest(Message, tag="speech"):
    request_id: str
    text: str
    voice: str | None = None  # None: the model's default voice
    speed: float = 1.0
    seed: int | None = None  # the same text, voice and seed give the same audio (models sample noise)
    trace_id: str | None = None


class AudioChunk(Message, tag="audio_chunk"):
    request_id: str
    pcm: bytes  # mono s16le at `sample_rate`
    sample_rate: int


class SpeechDone(Message, tag="speech_done"):
    request_id: str
    sample_rate: int
    samples: int  # in all chunks together
    processing_seconds: float = 0.0
