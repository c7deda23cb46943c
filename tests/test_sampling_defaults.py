"""The one function that fills what a request leaves unset (gateway/sampling_defaults.py), for every dialect."""

from __future__ import annotations

from gateway.dialects.chat.schema import ChatCompletionRequest
from gateway.dialects.chat.translate import asked_of, to_generate_request
from gateway.dialects.completions import BUILTIN, CompletionRequest
from gateway.dialects.completions import to_generate_request as completion_request
from gateway.dialects.openai_common import asked
from gateway.request_body import decode_request
from gateway.sampling_defaults import settle
from protocol.generation import SamplingDefaults

DEFAULTS = SamplingDefaults(temperature=0.0, top_k=40, max_tokens=64, stop=["END"], system_prompt="Be brief.")


def chat(body: str):
    req = decode_request(body.encode(), ChatCompletionRequest)
    return to_generate_request(req), asked_of(req)


def test_the_requests_own_fields_win_then_the_defaults_then_the_built_in_values():
    gen, own = chat('{"messages": [{"role": "user", "content": "Hi"}], "temperature": 0.7, "max_tokens": 5}')
    sampling = settle(gen, own, DEFAULTS, "m").sampling
    assert (sampling.temperature, sampling.max_tokens) == (0.7, 5)  # the request's
    assert (sampling.top_k, sampling.stop) == (40, ["END"])  # the defaults'
    assert (sampling.top_p, sampling.min_p, sampling.repetition_penalty) == (1.0, 0.0, None)  # built in
    gen, own = chat('{"messages": [{"role": "user", "content": "Hi"}], "temperature": null, "top_k": 0}')
    sampling = settle(gen, own, DEFAULTS, "m").sampling
    assert (sampling.temperature, sampling.top_k) == (0.0, 0)  # null is unset; 0 is set


def test_a_default_system_prompt_goes_first_only_where_none_is_given():
    gen, own = chat('{"messages": [{"role": "user", "content": "Hi"}], "logprobs": true}')
    settled = settle(gen, own, DEFAULTS, "m")
    assert [(m.role, m.content) for m in settled.messages] == [("system", "Be brief."), ("user", "Hi")]
    assert settled.sampling.logprobs is True  # what is not a default stays as translated
    gen, own = chat('{"messages": [{"role": "developer", "content": "Be long."}, {"role": "user", "content": "Hi"}]}')
    assert [m.content for m in settle(gen, own, DEFAULTS, "m").messages] == ["Be long.", "Hi"]


def test_legacy_completions_keep_openais_16_tokens_unless_a_default_says_otherwise():
    req = decode_request(b'{"prompt": "Once upon"}', CompletionRequest)
    gen = completion_request(req)
    assert settle(gen, asked(req, req.max_tokens, BUILTIN), SamplingDefaults(), "m").sampling.max_tokens == 16
    settled = settle(gen, asked(req, req.max_tokens, BUILTIN), DEFAULTS, "m")
    assert settled.sampling.max_tokens == 64 and settled.messages is None and settled.prompt == "Once upon"
