"""The speech engines in-process, as the worker's generation thread drives them: requests they must refuse end with
an error event and leave the engine serving; an abort frees the request at once. (test_speech_api.py runs the
same engines behind the server.)"""

from __future__ import annotations

import pytest

from protocol.audio import AudioChunk, SpeechDone, SpeechRequest, TranscribeRequest
from protocol.embedding import EmbedRequest
from protocol.generation import GenerationError
from tests.tiny_tts import VOICES, build_tiny_kitten_tts


def drain(engine) -> list:
    events = []
    while engine.busy:
        engine.step(events.append)
    return events


@pytest.fixture(scope="module")
def tts(tmp_path_factory):
    from worker.tts_engine import TextToSpeechEngine, load_tts

    return TextToSpeechEngine(load_tts(str(build_tiny_kitten_tts(tmp_path_factory.mktemp("tts") / "tiny-tts"))))


@pytest.fixture(scope="module")
def stt(tmp_path_factory):
    from supervisor.model_import import import_model
    from worker.stt_engine import SpeechToTextEngine, load_whisper

    store = tmp_path_factory.mktemp("stt")
    return SpeechToTextEngine(load_whisper(str(import_model("bundled:whisper-tiny.en", "whisper", store))))


def test_both_are_engines(tts, stt):
    from worker.backends import Engine

    assert isinstance(tts, Engine) and isinstance(stt, Engine)


def test_tts_refuses_what_it_cannot_speak_and_goes_on(tts):
    tts.submit(EmbedRequest(request_id="wrong", inputs=["a"]))
    tts.submit(SpeechRequest(request_id="voice", text="Hello.", voice="nobody"))
    tts.submit(SpeechRequest(request_id="ok", text="Hello.", voice=VOICES[0]))
    events = drain(tts)
    errors = {e.request_id: e for e in events if isinstance(e, GenerationError)}
    assert set(errors) == {"wrong", "voice"} and all(e.code == "invalid_request" for e in errors.values())
    assert "tts" in errors["wrong"].message and "nobody" in errors["voice"].message
    done = [e for e in events if isinstance(e, SpeechDone)]
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert [d.request_id for d in done] == ["ok"] and sum(len(c.pcm) for c in chunks) == 2 * done[0].samples


def test_tts_abort_ends_the_running_request(tts):
    tts.submit(SpeechRequest(request_id="long", text="A sentence to speak. " * 40, voice=VOICES[1]))
    events = []
    tts.step(events.append)  # starts it and produces its first chunk
    assert tts.in_flight == 1 and isinstance(events[-1], AudioChunk)
    assert tts.abort("long", events.append)
    assert not tts.busy and isinstance(events[-1], GenerationError) and events[-1].code == "aborted"


def test_stt_refuses_bad_requests_before_decoding(stt):
    stt.submit(EmbedRequest(request_id="wrong", inputs=["a"]))
    stt.submit(TranscribeRequest(request_id="odd", pcm=b"\0" * 33))
    stt.submit(TranscribeRequest(request_id="french", pcm=b"\0" * 3200, language="fr"))
    stt.submit(TranscribeRequest(request_id="klingon", pcm=b"\0" * 3200, language="tlh"))
    events = drain(stt)
    assert {e.request_id for e in events} == {"wrong", "odd", "french", "klingon"}
    assert all(isinstance(e, GenerationError) and e.code == "invalid_request" for e in events)
    assert "English-only" in next(e.message for e in events if e.request_id == "french")
