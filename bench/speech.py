"""What does serving speech cost, and do concurrent transcriptions share the worker well?

    uv run python bench/speech.py [--seconds 20] [--rounds 2]

One file (espeak-ng reading a paragraph, cut to --seconds) transcribed by the bundled Whisper tiny.en:
- in-process: mlx-audio's own `Model.generate` (the library's long-form loop) on the model as the worker loads it
  (float32 on a CPU, OpenBLAS where the host has it), with the file already decoded;
- through the server: the file uploaded to /v1/audio/transcriptions (ffmpeg decode, ZeroMQ, the worker's
  window-by-window loop), the two alternating round by round so drift in machine speed hits both alike.
Real-time factor = seconds of computing per second of audio (lower is faster). Goal: server speed (in-process
RTF / server RTF) >= 0.95x. Then 4 concurrent uploads: aggregate audio seconds per second against one at a time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.cpu_tuning import preload_blas  # before mlx is imported, as the worker does

preload_blas()

import httpx  # noqa: E402

from supervisor.model_import import import_model  # noqa: E402
from tests.harness import Server, write_config  # noqa: E402

MODEL = "whisper-tiny.en"
TEXT = (
    "The weather today is warm and sunny, with a light wind from the west. In the afternoon clouds will gather "
    "over the hills, and there may be a short shower before evening. Tomorrow will be cooler, with rain in the "
    "morning and clear skies at night. Farmers are hoping the rain will help the crops after a long dry month. "
    "The weekend looks bright, and the temperature should climb again by Sunday."
)


def make_audio(work: Path, seconds: float) -> tuple[Path, float]:
    spoken, clip = work / "spoken.wav", work / "clip.wav"
    subprocess.run(["espeak-ng", "-w", str(spoken), TEXT], check=True)
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-stream_loop", "-1", "-i", str(spoken),
                    "-t", str(seconds), "-ac", "1", "-ar", "16000", str(clip)], check=True)  # fmt: skip
    return clip, seconds


def in_process(model, audio, seconds: float) -> float:
    started = time.perf_counter()
    model.generate(audio, language="en", temperature=0.0, fp16=False, verbose=None)
    return (time.perf_counter() - started) / seconds


def through_server(url: str, clip: Path, seconds: float) -> float:
    started = time.perf_counter()
    transcribe(url, clip)
    return (time.perf_counter() - started) / seconds


def transcribe(url: str, clip: Path) -> str:
    with clip.open("rb") as f:
        reply = httpx.post(f"{url}/v1/audio/transcriptions", data={"model": MODEL, "response_format": "text"},
                           files={"file": (clip.name, f)}, timeout=1800)  # fmt: skip
    reply.raise_for_status()
    return reply.text


def concurrent(url: str, clip: Path, seconds: float, n: int) -> float:
    """Aggregate seconds of audio transcribed per second of wall time, `n` uploads at once."""
    started = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda _: transcribe(url, clip), range(n)))
    return n * seconds / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", default="bench/results/speech.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mlxs-bench-"))
    store = work / "store"
    import_model(f"bundled:{MODEL}", MODEL, store)
    clip, seconds = make_audio(work, args.seconds)
    spec = {"id": MODEL, "source": MODEL, "type": "stt", "auto_load": True}
    config = write_config(work / "models.yaml", store, [spec])

    from mlx_audio.stt.utils import load_audio

    from worker.stt_engine import load_whisper

    loaded = load_whisper(str(store / MODEL))
    audio = load_audio(str(clip))
    server = Server(config)
    server.env["LOG_LEVEL"] = "WARNING"
    server.start()
    try:
        print("warming up both sides", flush=True)
        in_process(loaded.model, audio, seconds)
        through_server(server.url, clip, seconds)
        local, served = [], []
        for round_ in range(args.rounds):
            local.append(in_process(loaded.model, audio, seconds))
            served.append(through_server(server.url, clip, seconds))
            print(f"round {round_ + 1}: RTF in-process {local[-1]:.3f}, server {served[-1]:.3f}", flush=True)
        one = concurrent(server.url, clip, seconds, 1)
        many = concurrent(server.url, clip, seconds, args.concurrency)
        print(f"aggregate audio s/s: 1 at a time {one:.3f}, {args.concurrency} at once {many:.3f}", flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    base, ours = statistics.median(local), statistics.median(served)
    speed = base / ours
    print(f"\nmodel {MODEL}, {seconds:.0f} s of espeak-ng speech, greedy, median of {args.rounds} rounds\n")
    print("| path | real-time factor | audio s per s |")
    print("|---|---:|---:|")
    print(f"| in-process (mlx-audio Model.generate) | {base:.3f} | {1 / base:.2f} |")
    print(f"| server (HTTP upload -> ffmpeg -> ZeroMQ -> worker) | {ours:.3f} | {1 / ours:.2f} |")
    print(f"| server, 1 upload at a time | | {one:.2f} |")
    print(f"| server, {args.concurrency} uploads at once (aggregate) | | {many:.2f} |")
    print(f"\nserver / in-process speed: {speed:.3f}  (goal >= 0.95: {'met' if speed >= 0.95 else 'NOT met'})")
    print(f"{args.concurrency} concurrent / 1 aggregate: {many / one:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seconds": seconds, "rtf_in_process": local, "rtf_server": served, "speed": speed,
                               "aggregate_1": one, f"aggregate_{args.concurrency}": many}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
