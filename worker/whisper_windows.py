"""One transcription, advanced one 30-second window at a time, so the worker's loop can interleave requests,
answer pings and stream segments between windows.

This is Whisper's own long-form algorithm (openai/whisper `transcribe`, as mlx-audio's `Model.generate` runs it),
cut at its window loop: decode a window with temperature fallback, split the tokens into segments at the
timestamp tokens, move the window to the last complete segment, condition the next window on the text so far.
Unlike the library, it keeps only the 16-bit samples of the upload and computes each window's log-mel spectrogram
when it gets there, so a long file is never held decoded twice (nor its spectrogram whole).
"""

from __future__ import annotations

import time

import mlx.core as mx
import numpy as np
from mlx_audio.stt.models.whisper.audio import (
    FRAMES_PER_SECOND,
    HOP_LENGTH,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    log_mel_spectrogram,
    pad_or_trim,
)
from mlx_audio.stt.models.whisper.decoding import DecodingOptions, DecodingResult
from mlx_audio.stt.models.whisper.timing import add_word_timestamps

from protocol.audio import Segment, TranscribeRequest, Word

TEMPERATURE_STEP = 0.2  # the fallback ladder: the request's temperature, then up by this to 1.0
COMPRESSION_RATIO_THRESHOLD = 2.4  # more repetitive than this: decode again, hotter
LOGPROB_THRESHOLD = -1.0  # less likely than this: decode again, hotter
NO_SPEECH_THRESHOLD = 0.6  # a window this likely silent (and unlikely text) yields nothing
INPUT_STRIDE = 2  # mel frames per audio token (the encoder's second convolution has stride 2)
TIME_PRECISION = INPUT_STRIDE * HOP_LENGTH / SAMPLE_RATE  # seconds per timestamp token: 0.02


class Transcription:
    def __init__(self, model, request: TranscribeRequest):
        self.request = request
        self._model = model
        self._samples = np.frombuffer(request.pcm, dtype="<i2")  # the upload, held once, as 16-bit samples
        self.duration = len(self._samples) / SAMPLE_RATE
        self._frames = len(self._samples) // HOP_LENGTH
        self._fp16 = model.dtype == mx.float16
        self.language = request.language or ("en" if not model.is_multilingual else None)
        self._tokenizer = None  # known once the language is (detected from the first window if not given)
        self.seek = 0  # in mel frames
        self.segments: list[Segment] = []
        self._tokens: list[int] = []  # the text so far, which the next window is conditioned on
        self._prompt_reset = 0
        self._window: tuple[mx.array, int] | None = None  # the current window's spectrogram and frames
        self._attempt = 0  # decodings of the current window so far that looked degenerate
        self.processing_seconds = 0.0

    @property
    def done(self) -> bool:
        return self.seek >= self._frames

    def _window_mel(self) -> tuple[mx.array, int]:
        """The log-mel spectrogram of the window starting at `seek` (padded to 30 s) and its frames of audio."""
        start = self.seek * HOP_LENGTH
        chunk = self._samples[start : start + N_SAMPLES].astype(np.float32) / 32768.0
        mel = log_mel_spectrogram(mx.array(chunk), n_mels=self._model.dims.n_mels, padding=N_SAMPLES - len(chunk))
        size = min(N_FRAMES, self._frames - self.seek)
        return pad_or_trim(mel[:size], N_FRAMES, axis=-2).astype(self._model.dtype), size

    def _start(self, mel: mx.array) -> None:
        if self.language is None:
            _, probs = self._model.detect_language(mel)
            self.language = max(probs, key=probs.get)
        self._tokenizer = self._model.get_tokenizer(language=self.language, task=self.request.task)
        if self.request.prompt:
            self._tokens = self._tokenizer.encode(" " + self.request.prompt.strip())

    def _decode(self, mel: mx.array) -> DecodingResult | None:
        """One attempt at the window: greedy (or the request's temperature) first, then hotter while the output looks
        degenerate. None: try again at the next temperature (another step, so pings and other requests get in)."""
        t = self.request.temperature + self._attempt * TEMPERATURE_STEP
        options = DecodingOptions(
            task=self.request.task,
            language=self.language,
            temperature=float(t),
            prompt=self._tokens[self._prompt_reset :],
            fp16=self._fp16,
            best_of=5 if t > 0 else None,
        )
        result = self._model.decode(mel, options)
        degenerate = result.compression_ratio > COMPRESSION_RATIO_THRESHOLD or result.avg_logprob < LOGPROB_THRESHOLD
        silent = result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob < LOGPROB_THRESHOLD
        if degenerate and not silent and t + TEMPERATURE_STEP <= 1.0 + 1e-6:
            self._attempt += 1
            return None
        self._attempt = 0
        return result

    def advance(self) -> list[Segment]:
        """One decoding attempt at the current window; the window's new segments once it is done (none for
        silence, or while it is being decoded again at a higher temperature)."""
        started = time.perf_counter()
        if self._window is None:
            self._window = self._window_mel()
        mel, size = self._window
        if self._tokenizer is None:
            self._start(mel)
        result = self._decode(mel)
        if result is None:
            self.processing_seconds += time.perf_counter() - started
            return []
        self._window = None
        offset = self.seek / FRAMES_PER_SECOND
        tokens = np.array(result.tokens)
        if result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob < LOGPROB_THRESHOLD:
            self.seek += size  # silence: skip the window
            self.processing_seconds += time.perf_counter() - started
            return []
        pieces, self.seek = self._split(tokens, offset, size)
        if self.request.word_timestamps and pieces:
            add_word_timestamps(
                segments=pieces,
                model=self._model,
                tokenizer=self._tokenizer,
                mel=mel,
                num_frames=size,
                last_speech_timestamp=self.segments[-1].end if self.segments else 0.0,
            )
        kept = [p for p in pieces if p["text"].strip() and p["start"] < p["end"]]  # drop empty and instant ones
        new = [self._segment(len(self.segments) + i, piece, result) for i, piece in enumerate(kept)]
        for piece in pieces:
            self._tokens.extend(piece["tokens"])
        if result.temperature > 0.5:  # text sampled that hot is a poor prompt for the next window
            self._prompt_reset = len(self._tokens)
        self.segments += new
        self.processing_seconds += time.perf_counter() - started
        return new

    def _split(self, tokens: np.ndarray, offset: float, size: int) -> tuple[list[dict], int]:
        """Segments between consecutive timestamp tokens, and where the next window starts."""
        tokenizer = self._tokenizer
        begin = tokenizer.timestamp_begin
        is_time = tokens >= begin
        single_ending = len(is_time) >= 2 and list(is_time[-2:]) == [False, True]
        cuts = list(np.where(is_time[:-1] & is_time[1:])[0] + 1)
        pieces = []
        if cuts:
            if single_ending:
                cuts.append(len(tokens))
            last = 0
            for cut in cuts:
                part = tokens[last:cut]
                pieces.append(self._piece(part, offset + (part[0] - begin) * TIME_PRECISION,
                                          offset + (part[-1] - begin) * TIME_PRECISION))  # fmt: skip
                last = cut
            # A window that ends inside a segment: the next one starts where the last whole segment ended.
            seek = self.seek + (size if single_ending else int(tokens[last - 1] - begin) * INPUT_STRIDE)
        else:
            stamps = tokens[is_time]
            duration = size / FRAMES_PER_SECOND
            if len(stamps) and stamps[-1] != begin:
                duration = (stamps[-1] - begin) * TIME_PRECISION
            pieces.append(self._piece(tokens, offset, offset + duration))
            seek = self.seek + size
        return pieces, max(seek, self.seek + 1)

    def _piece(self, tokens: np.ndarray, start: float, end: float) -> dict:
        ids = tokens.tolist()
        text = self._tokenizer.decode([t for t in ids if t < self._tokenizer.eot])
        return {"seek": self.seek, "start": float(start), "end": float(end), "text": text, "tokens": ids}

    def _segment(self, index: int, piece: dict, result: DecodingResult) -> Segment:
        words = [
            Word(word=w["word"], start=round(w["start"], 2), end=round(w["end"], 2), probability=w["probability"])
            for w in piece.get("words", ())
        ]
        return Segment(
            id=index,
            start=round(piece["start"], 2),
            end=round(piece["end"], 2),
            text=piece["text"],
            tokens=piece["tokens"],
            temperature=result.temperature,
            avg_logprob=float(result.avg_logprob),
            compression_ratio=float(result.compression_ratio),
            no_speech_prob=float(result.no_speech_prob),
            words=words,
        )

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)
