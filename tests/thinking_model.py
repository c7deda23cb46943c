"""The bundled SmolLM2 as a reasoning model: the same weights and tokenizer (linked, not copied) under a chat
template that opens a <think> block in the generation prompt, as DeepSeek-R1's and Qwen3-Thinking's do, unless
`enable_thinking` is false (then the block comes closed, as Qwen3's template writes it).

SmolLM2 never closes the block by itself: tests give it a reasoning budget, or a JSON schema with one, so the
worker forces the end of thinking and the answer follows.
"""

from __future__ import annotations

import json
from pathlib import Path

THINKING_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{% else %}{{ '<think>\\n' }}{% endif %}{% endif %}"
)


def build_thinking_copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name != "tokenizer_config.json" and not (dst / item.name).exists():
            (dst / item.name).symlink_to(item.resolve())
    config = json.loads((src / "tokenizer_config.json").read_text())
    (dst / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": THINKING_TEMPLATE}))
    return dst
