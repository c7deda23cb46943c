"""The launch contract: what the supervisor starts a worker with arrives whole, and standalone flags build the same."""

from __future__ import annotations

import pytest

from protocol import PROTOCOL_VERSION
from protocol.control import ModelType
from protocol.launch import (
    EngineSettings,
    LlamaCppSettings,
    WorkerLaunch,
    decode_launch,
    encode_launch,
    worker_argv,
    worker_endpoint,
    workers_endpoint,
)
from worker.__main__ import parse_launch

FULL = WorkerLaunch(
    model_id="qwen3",
    instance_id="abc123",
    source="/models/qwen3",
    model_type=ModelType.VLM,
    context_length=4096,
    draft_source="/models/qwen3-small",
    engine=EngineSettings(decode_concurrency=2, prompt_cache_mb=0, num_draft_tokens=5),
    llama_cpp=LlamaCppSettings(parallel=2, threads=3),
    data_endpoint="ipc:///run/worker-qwen3.sock",
    supervisor_endpoint="ipc:///run/supervisor-workers.sock",
    shutdown_grace=2.5,
    exit_with_stdin=True,
)


def test_a_launch_round_trips_through_the_workers_command_line():
    assert decode_launch(encode_launch(FULL)) == FULL
    argv = worker_argv(FULL, python="python")
    assert argv[:3] == ["python", "-m", "worker"]
    assert parse_launch(argv[3:]) == FULL  # what the worker's main decodes


def test_standalone_flags_build_the_same_struct_with_its_defaults(tmp_path):
    launch = parse_launch(["--model-id", "m", "--source", "/s", "--run-dir", str(tmp_path), "--instance-id", "i"])
    assert launch == WorkerLaunch(
        model_id="m", instance_id="i", source="/s", data_endpoint=worker_endpoint(tmp_path, "m")
    )
    assert launch.engine == EngineSettings() and launch.supervisor_endpoint is None and not launch.exit_with_stdin
    tuned = parse_launch(
        ["--model-id", "m", "--source", "/s", "--endpoint", "ipc:///x", "--decode-concurrency", "2",
         "--model-type", "embedding", "--supervisor", workers_endpoint(tmp_path), "--exit-with-stdin",
         "--parallel", "2", "--n-gpu-layers", "0"]
    )  # fmt: skip
    assert tuned.engine == EngineSettings(decode_concurrency=2)
    assert tuned.llama_cpp == LlamaCppSettings(parallel=2, n_gpu_layers=0)
    assert tuned.model_type is ModelType.EMBEDDING and tuned.data_endpoint == "ipc:///x"
    assert tuned.supervisor_endpoint == workers_endpoint(tmp_path) and tuned.exit_with_stdin
    assert len(tuned.instance_id) == 12  # made up when the flags give none


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (
            [
                "--launch",
                encode_launch(FULL).replace(f'"protocol_version":{PROTOCOL_VERSION}', '"protocol_version":99'),
            ],
            "version 99",
        ),
        (["--launch", encode_launch(FULL).replace('"model_id":"qwen3"', '"model_id":7')], "$.model_id"),
        (["--launch", encode_launch(FULL).replace('"model_type":"vlm"', '"model_type":"diffusion"')], "$.model_type"),
        (["--launch", "{not json"], "JSON"),
        (["--source", "/s"], "--model-id and --source are required"),
        (["--model-id", "m", "--source", "/s", "--num-draft-tokens", "0"], "num_draft_tokens must be at least 1"),
        (["--model-id", "m", "--source", "/s", "--parallel", "0"], "parallel and threads must be at least 1"),
    ],
)
def test_a_launch_the_worker_cannot_use_stops_it_with_the_reason(argv, complaint, capsys):
    assert f'"protocol_version":{PROTOCOL_VERSION}' in encode_launch(FULL)
    with pytest.raises(SystemExit) as stopped:
        parse_launch(argv)
    assert stopped.value.code == 2
    assert complaint in capsys.readouterr().err
