"""Speech through the OpenAI SDK: the bundled Whisper tiny.en (converted from CTranslate2's format) transcribes what
espeak-ng says; a tiny random-weight Kitten TTS model speaks; both live under the same budget as the LLM.

One server for the module: whisper (stt), tiny-tts (tts) and smollm2 (llm), with a budget that holds the two
speech models but not all three, so the last test can watch whisper evicted for the LLM and loaded again.
"""

from __future__ import annotations

import io
import re
import subprocess
import wave

import httpx
import pytest
from openai import BadRequestError, OpenAI
from prometheus_client.parser import text_string_to_metric_families

from supervisor.model_import import import_model
from tests.conftest import MODEL
from tests.harness import Server, wait_until, write_config
from tests.tiny_tts import SAMPLE_RATE, VOICES, build_tiny_kitten_tts

pytestmark = [pytest.mark.needs_tool("espeak-ng"), pytest.mark.needs_tool("ffmpeg")]

WHISPER = "whisper-tiny.en"
SENTENCE = "The weather today is warm and sunny, with a light wind from the west."
# About seventy seconds as espeak-ng reads it: distinct sentences, since Whisper decodes a window of the same
# sentence over and over again at rising temperatures (its output compresses too well to be trusted).
STORY = (
    "Every morning the baker opens her shop before the sun comes up. She mixes flour, water and salt, and leaves "
    "the dough to rise while she sweeps the floor. The first customers are the drivers of the early buses, who "
    "want hot coffee and fresh rolls. Later the children come in on their way to school and ask for sweet buns. "
    "At noon the shop is full of office workers buying sandwiches and soup. In the afternoon it is quiet, and the "
    "baker writes her orders for the next week. She needs more butter, two bags of sugar and a new oven door. "
    "Her brother repairs the old bicycle that she uses for deliveries. When the evening comes, she gives the "
    "bread that is left to the shelter near the river. Then she counts the money, turns off the lights and walks "
    "home through the park. Her dog waits for her at the gate, and together they watch the stars for a while "
    "before she goes to bed. On Sundays the shop is closed, and she visits her parents in the small town by the "
    "lake. Her father grows tomatoes and beans in a garden behind the house. Her mother makes a large lunch and "
    "asks about the customers, the prices and the weather. In the summer they swim in the cold water and sit in "
    "the shade of the old trees. In the winter they play cards by the fire and talk about the past."
)
MAX_AUDIO_BYTES = 2 * 2**20
MAX_AUDIO_SECONDS = 90


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance over the reference's length."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / len(ref)


def speak(text: str, path) -> None:
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True)


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", *args], check=True)


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """espeak-ng's sentence as WAV and MP3, its story as a 70 s M4A, and too long a silence."""
    d = tmp_path_factory.mktemp("audio")
    speak(SENTENCE, d / "sentence.wav")
    ffmpeg("-i", str(d / "sentence.wav"), str(d / "sentence.mp3"))
    speak(STORY, d / "story.wav")  # Whisper needs three 30 s windows for it
    ffmpeg("-i", str(d / "story.wav"), "-c:a", "aac", str(d / "long.m4a"))
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", str(MAX_AUDIO_SECONDS + 10), str(d / "silence.mp3"))
    return d


@pytest.fixture(scope="module")
def speech_server(tmp_path_factory, model_store):
    import_model(f"bundled:{WHISPER}", WHISPER, model_store, force=True)
    build_tiny_kitten_tts(model_store / "tiny-tts")
    config = write_config(
        tmp_path_factory.mktemp("speech") / "models.yaml",
        model_store,
        [
            {"id": WHISPER, "aliases": ["whisper"], "source": WHISPER, "type": "stt", "memory_gb": 1.2},
            {"id": "tiny-tts", "source": "tiny-tts", "type": "tts", "memory_gb": 0.4},
            {"id": "smollm2", "source": MODEL, "context_length": 2048, "memory_gb": 0.4},
        ],
        memory_budget_gb=1.7,  # whisper + tiny-tts, or either with smollm2: never all three
        heartbeat_seconds=0.5,
        max_wait_seconds=60,
    )
    srv = Server(config)
    srv.env |= {"GATEWAY_MAX_AUDIO_BYTES": str(MAX_AUDIO_BYTES), "GATEWAY_MAX_AUDIO_SECONDS": str(MAX_AUDIO_SECONDS)}
    yield srv.start()
    srv.stop()


@pytest.fixture(scope="module")
def speech_client(speech_server):
    return OpenAI(base_url=f"{speech_server.url}/v1", api_key="not-needed", max_retries=0, timeout=600)


# -- transcription -------------------------------------------------------------------------------------------


def test_transcribes_espeak_speech_with_word_timestamps(speech_client, audio):
    with (audio / "sentence.wav").open("rb") as f:
        result = speech_client.audio.transcriptions.create(
            model="whisper",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert wer(SENTENCE, result.text) <= 0.3, result.text
    assert result.language == "en" and 2.0 < result.duration < 5.0
    assert result.segments and result.segments[0].start == 0.0
    starts = [w.start for w in result.words]
    assert len(result.words) >= 6 and starts == sorted(starts) and result.words[-1].end <= result.duration + 0.5


def test_mp3_streamed_as_text_deltas(speech_client, audio):
    with (audio / "sentence.mp3").open("rb") as f:
        events = list(speech_client.audio.transcriptions.create(model=WHISPER, file=f, stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert deltas and len(done) == 1
    assert "".join(deltas).strip() == done[0].text
    assert wer(SENTENCE, done[0].text) <= 0.3, done[0].text


@pytest.mark.timeout(900)  # three windows of Whisper on a shared 2-core machine
def test_a_70_second_m4a_is_transcribed_in_windows_as_srt(speech_client, audio):
    with (audio / "long.m4a").open("rb") as f:
        srt = speech_client.audio.transcriptions.create(model=WHISPER, file=f, response_format="srt")
    cues = re.findall(r"(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n(.+?)\n(?:\n|$)", srt)
    assert [int(c[0]) for c in cues] == list(range(1, len(cues) + 1)), srt

    def seconds(clock: str) -> float:
        h, m, s = clock.replace(",", ".").split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    with wave.open(str(audio / "story.wav")) as w:
        duration = w.getnframes() / w.getframerate()
    assert duration > 60 and seconds(cues[-1][2]) > 60  # the third window was reached
    assert all(seconds(c[1]) <= seconds(c[2]) <= duration + 1 for c in cues)
    text = " ".join(c[3] for c in cues)
    assert wer(STORY, text) <= 0.3, text


def test_a_file_that_is_not_audio_is_a_400(speech_client, speech_server):
    with pytest.raises(BadRequestError) as err:
        speech_client.audio.transcriptions.create(model=WHISPER, file=("notes.wav", b"this is not audio at all" * 50))
    assert err.value.body["param"] == "file" and "could not be decoded as audio" in err.value.message
    no_file = {"notes": ("notes.txt", b"")}  # multipart, as uploads are, without the file field
    reply = httpx.post(
        f"{speech_server.url}/v1/audio/transcriptions", data={"model": WHISPER}, files=no_file, timeout=30
    )
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "file"


def test_upload_size_and_duration_limits(speech_server, audio):
    url = f"{speech_server.url}/v1/audio/transcriptions"
    junk = {"file": ("big.wav", b"\0" * (MAX_AUDIO_BYTES + 1))}
    big = httpx.post(url, data={"model": WHISPER}, files=junk, timeout=60)
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    with (audio / "silence.mp3").open("rb") as f:
        long = httpx.post(url, data={"model": WHISPER}, files={"file": ("silence.mp3", f)}, timeout=60)
    assert long.status_code == 400 and f"{MAX_AUDIO_SECONDS} seconds" in long.json()["error"]["message"]


def test_transcriptions_count_audio_seconds(speech_server):
    samples = [
        sample
        for family in text_string_to_metric_families(httpx.get(f"{speech_server.url}/metrics", timeout=30).text)
        for sample in family.samples
        if sample.labels.get("model") == WHISPER and sample.labels.get("direction") == "transcribed"
    ]
    seconds = sum(s.value for s in samples if s.name == "mlx_server_audio_seconds_total")
    assert seconds > 60  # the long file and the sentences
    rtf = [s.value for s in samples if s.name == "mlx_server_audio_real_time_factor_count"]
    assert rtf and rtf[0] >= 3
    log = httpx.get(f"{speech_server.url}/api/activity-logs", timeout=30).json()["data"]
    spoken = [e for e in log if e["route"] == "/v1/audio/transcriptions" and e["status"] == 200]
    assert spoken and all(e["audio_seconds"] > 0 and e["real_time_factor"] > 0 for e in spoken)


# -- speech --------------------------------------------------------------------------------------------------


def test_speech_is_a_wav_of_the_models_rate_that_grows_with_the_input(speech_client):
    lengths = []
    for text in ("Hello there.", "Hello there. This sentence is a good deal longer than the first one was."):
        reply = speech_client.audio.speech.create(model="tiny-tts", voice=VOICES[0], input=text, response_format="wav")
        with wave.open(io.BytesIO(reply.read())) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (SAMPLE_RATE, 1, 2)
            lengths.append(wav.getnframes())
    assert 0 < lengths[0] < lengths[1]


def test_speech_as_mp3(speech_client, tmp_path):
    reply = speech_client.audio.speech.create(model="tiny-tts", voice=VOICES[1], input="Good morning.")
    (tmp_path / "out.mp3").write_bytes(reply.read())
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,sample_rate", "-of", "csv=p=0",
         str(tmp_path / "out.mp3")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == f"mp3,{SAMPLE_RATE}"


def test_streamed_speech_is_the_same_bytes_in_chunks(speech_client):
    text = " ".join(["Streaming speech arrives one stretch of text at a time."] * 9)  # over 400 characters: 2 chunks
    asked = {"model": "tiny-tts", "voice": VOICES[0], "input": text, "response_format": "pcm"}
    whole = speech_client.audio.speech.create(**asked, extra_body={"seed": 7})  # the vocoder samples noise
    with speech_client.audio.speech.with_streaming_response.create(
        **asked, extra_body={"stream": True, "seed": 7}
    ) as streamed:
        chunks = list(streamed.iter_bytes(chunk_size=None))
    assert len(chunks) >= 2 and b"".join(chunks) == whole.read()


def test_speech_errors_in_openais_shape(speech_client):
    with pytest.raises(BadRequestError) as err:
        speech_client.audio.speech.create(model="tiny-tts", voice="no-such-voice", input="Hello.")
    assert "no-such-voice" in err.value.message
    with pytest.raises(BadRequestError) as err:
        speech_client.audio.speech.create(model="tiny-tts", voice=VOICES[0], input="Hello.", speed=9)
    assert err.value.body["param"] == "speed"


# -- under the budget ----------------------------------------------------------------------------------------


def states(server) -> dict[str, str]:
    models = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]
    return {m["id"]: m["state"] for m in models}


def test_whisper_is_evicted_for_the_llm_and_reloaded_for_the_next_transcription(speech_client, speech_server, audio):
    httpx.post(f"{speech_server.url}/api/v1/models/{WHISPER}/load", json={}, timeout=300).raise_for_status()
    speech_client.audio.speech.create(model="tiny-tts", voice=VOICES[0], input="Hi.")  # whisper is now the LRU
    assert states(speech_server)[WHISPER] == "ready"
    chat = speech_client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4, temperature=0
    )
    assert chat.choices[0].message.content is not None
    assert wait_until(lambda: states(speech_server)[WHISPER] == "stopped", timeout=60)
    # A transcription sent to the LLM is refused; the LLM stays up.
    with pytest.raises(BadRequestError) as err, (audio / "sentence.wav").open("rb") as f:
        speech_client.audio.transcriptions.create(model="smollm2", file=f)
    assert "stt" in err.value.message
    with (audio / "sentence.wav").open("rb") as f:
        vtt = speech_client.audio.transcriptions.create(model=WHISPER, file=f, response_format="vtt")
    assert states(speech_server)[WHISPER] == "ready"
    assert vtt.startswith("WEBVTT\n\n")
    cues = re.findall(r"(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})\n(.+)\n", vtt)
    assert cues and wer(SENTENCE, " ".join(c[2] for c in cues)) <= 0.3, vtt
