"""Reasoning models: where thinking starts and ends, thinking split from the answer as tokens stream, and a
logits processor that caps thinking and keeps an answer's format (a JSON schema, a required call) off it.

The markers come from mlx-lm (TokenizerWrapper.think_start / think_end, inferred from the vocabulary: <think>,
<longcat_think>, Gemma's channel, ...), else from the chat template: a template that writes <think> opens a
<think>...</think> block whether or not the vocabulary has tokens of its own for them. A prompt that ends inside
an open block (the template opened it: DeepSeek-R1, Qwen3-Thinking, ...) starts the output in thinking; otherwise
the model may open a block itself (Qwen3 with enable_thinking). The split runs on text with mlx-lm's
TextStateMachine, so a marker is found however the model tokenized it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.generate import TextStateMachine

THINKING, ANSWER = "reasoning", "normal"  # TextStateMachine's state names, as mlx-lm's server uses them
PROMPT_TAIL = 32  # prompt tokens read back to tell whether the template left a block open


@dataclass(frozen=True)
class ReasoningFormat:
    start: str
    end: str
    end_tokens: tuple[int, ...]  # what the model is made to write when its thinking budget is spent
    start_token: int | None  # the start marker when it is one token: the model may choose it as its first


def reasoning_format(tokenizer) -> ReasoningFormat | None:
    """This model's thinking markers, or None for a model that does not think."""
    if tokenizer.has_thinking:
        start, end = tokenizer.think_start, tokenizer.think_end
        start_tokens, end_tokens = tuple(tokenizer.think_start_tokens), tuple(tokenizer.think_end_tokens)
    else:
        template = getattr(tokenizer, "chat_template", None)
        if not isinstance(template, str) or "<think>" not in template:
            return None
        start, end = "<think>", "</think>"
        start_tokens = tuple(tokenizer.encode(start, add_special_tokens=False))
        end_tokens = tuple(tokenizer.encode(end, add_special_tokens=False))
    return ReasoningFormat(start, end, end_tokens, start_tokens[0] if len(start_tokens) == 1 else None)


def prompt_block(fmt: ReasoningFormat, tokenizer, prompt: list[int]) -> str | None:
    """THINKING if the prompt ends inside a block of thinking its template opened, ANSWER if it ends just after
    one it closed (thinking turned off, as Qwen3's template does it), else None."""
    tail = tokenizer.decode(prompt[-PROMPT_TAIL:])
    start, end = tail.rfind(fmt.start), tail.rfind(fmt.end)
    if start > end:
        return THINKING
    return ANSWER if end >= 0 and not tail[end + len(fmt.end) :].strip() else None


class ReasoningSplit:
    """Detokenized text in, (thinking, answer) out, markers removed and partial markers held back.

    Thinking comes without the whitespace around it, and an answer after thinking without the blank lines that
    separate them (templates and models put newlines there that no client wants).
    """

    def __init__(self, fmt: ReasoningFormat, block: str | None):
        """`block`: where the prompt left off (prompt_block)."""
        machine = TextStateMachine({ANSWER: [(fmt.start, THINKING)], THINKING: [(fmt.end, ANSWER)]})
        self._state = machine.make_state(block or ANSWER)
        self._held = ""  # whitespace at the end of the thinking so far: sent only if more thinking follows
        self._fresh = block is not None  # at the start of a block of thinking or of an answer after one: no spaces
        self._last = self._state[0]

    @property
    def thinking(self) -> bool:
        return self._state[0] == THINKING

    def feed(self, text: str) -> tuple[str, str]:
        self._state, segments = TextStateMachine.split(self._state, text)
        return self._sorted(segments)

    def flush(self) -> tuple[str, str]:
        """The end of generation: what was held back as a possible marker is text after all."""
        self._state, rest, state = TextStateMachine.flush(self._state)
        return self._sorted([(state, rest)])

    def _sorted(self, segments) -> tuple[str, str]:
        thought, answer = [], []
        for state, piece in segments:
            if state != self._last:  # a block began or ended: the whitespace at its edges goes
                self._held, self._fresh, self._last = "", True, state
            if self._fresh:
                piece = piece.lstrip()
                self._fresh = not piece
            if state == THINKING:
                body = (self._held + piece).rstrip()
                self._held = (self._held + piece)[len(body) :]
                thought.append(body)
            else:
                answer.append(piece)
        return "".join(thought), "".join(answer)


class ReasoningGate:
    """A logits processor (one per sequence) for a model that may think.

    Thinking runs free until it has spent `budget` tokens; then the end marker is forced, token by token. The
    answer's own processors (`answer()` builds them: a JSON schema, a required tool call) start once thinking has
    ended, so they constrain the answer and never the thinking. With a one-token start marker and a prompt that
    left no block open, the first token may be that marker (the answer's format is enforced on every other).
    """

    def __init__(
        self,
        fmt: ReasoningFormat,
        tokenizer,
        thinking: bool,
        budget: int | None,
        answer: Callable[[], list] = list,
    ):
        self._fmt, self._budget, self._make_answer = fmt, budget, answer
        self._detokenizer = tokenizer.detokenizer
        self._state = "thinking" if thinking else ("opening" if fmt.start_token is not None else "answer")
        self._spent = self._forced = 0
        self._tail = ""  # the end of the thinking text, where the end marker would appear
        self._answer: list | None = None
        self._started = False

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self._started:  # the first call sees the prompt; later ones end with the token sampled last
            self._saw(int(tokens.reshape(-1)[-1].item()))
        self._started = True
        if self._state == "thinking" and self._budget is not None and self._spent >= self._budget:
            self._state = "closing"
        if self._state == "closing":
            return _only(logits, self._fmt.end_tokens[self._forced])
        if self._state == "thinking":
            return logits
        constrained = self._answering(tokens, logits)
        if self._state == "opening":  # the answer's format, or the start of a block of thinking
            start = self._fmt.start_token
            constrained = mx.where(mx.arange(logits.shape[-1]) == start, logits, constrained)
        return constrained

    def _answering(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self._answer is None:
            self._answer = self._make_answer()
        for processor in self._answer:
            logits = processor(tokens, logits)
        return logits

    def _saw(self, token: int) -> None:
        if self._state == "opening":
            if token == self._fmt.start_token:
                self._state, self._answer = "thinking", None  # the answer's processors start afresh after it
            else:
                self._state = "answer"
        elif self._state == "thinking":
            self._spent += 1
            self._detokenizer.add_token(token)
            text = self._tail + self._detokenizer.last_segment
            if self._fmt.end in text:
                self._state = "answer"
            self._tail = text[-len(self._fmt.end) :]
        elif self._state == "closing":
            self._forced += 1
            if self._forced == len(self._fmt.end_tokens):
                self._state = "answer"


def _only(logits: mx.array, token: int) -> mx.array:
    return mx.where(mx.arange(logits.shape[-1]) == token, logits, -mx.inf)
