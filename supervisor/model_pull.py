"""A pull from a Hugging Face hub into the model store: the job behind `supervisor ctl pull` and
POST /api/v1/models/pull.

The supervisor runs it as a child process (`python -m supervisor.model_pull ...`, see pulls.py), so a download or
a conversion never holds up the supervisor's loop nor takes memory in its process. The job writes its progress
to stdout as JSON lines, one PullProgress each, a few a second at most; everything else it prints (mlx-lm's
convert, huggingface_hub's warnings) goes to stderr, the supervisor's log.

With huggingface_hub (HF_ENDPOINT, HF_TOKEN and the proxy settings of the environment apply): the revision is
resolved to a commit first and every file is fetched at that commit, so a branch that moves during the pull
cannot mix two versions, and the commit is pinned in the model's metadata. The files mlx-lm loads (its own
allow patterns) are downloaded into `.pull-NAME` in the store, four at a time; a dropped connection is resumed
with a Range request, and files an earlier, interrupted pull finished are kept and not fetched again. Converted
if asked (mlx-lm's convert: quantized, or cast to a dtype) into `.convert-NAME`, the model is renamed into place
only once it is complete: a pull that fails leaves no model under its name.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatch
from pathlib import Path
from typing import TextIO

import msgspec

from protocol.store import ConvertOptions, FileProgress, PullProgress, PullState
from supervisor.model_store import check_name, delete, partial_dir, take_away, write_metadata

Q_BITS = (2, 3, 4, 5, 6, 8)
Q_GROUP_SIZES = (32, 64, 128)
DTYPES = ("float16", "bfloat16", "float32")
# mlx_lm.utils.DEFAULT_ALLOW_PATTERNS, copied: importing mlx_lm.utils imports transformers, seconds per pull (a
# test checks they stay equal).
ALLOW_PATTERNS = ("*.json", "model*.safetensors", "*.py", "tokenizer.model", "*.tiktoken", "tiktoken.model", "*.txt",
                  "*.jsonl", "*.jinja")  # fmt: skip
DOWNLOADS_AT_ONCE = 4
REPORT_EVERY = 0.2  # seconds between progress lines while bytes arrive


class PullError(ValueError):
    pass


def check_options(options: ConvertOptions) -> None:
    """The conversion options the seeds' script offers; anything else is refused before a byte is fetched."""
    if options.q_bits not in Q_BITS:
        raise PullError(f"q_bits must be one of {', '.join(map(str, Q_BITS))}")
    if options.q_group_size not in Q_GROUP_SIZES:
        raise PullError(f"q_group_size must be one of {', '.join(map(str, Q_GROUP_SIZES))}")
    if options.dtype is not None and options.dtype not in DTYPES:
        raise PullError(f"dtype must be one of {', '.join(DTYPES)}")


def default_name(repo: str) -> str:
    return repo.rstrip("/").rsplit("/", 1)[-1]


def wanted(path: str) -> bool:
    """The files mlx-lm itself fetches for a model, so weights in other formats are skipped."""
    return any(fnmatch(path, pattern) for pattern in ALLOW_PATTERNS)


class Reporter:
    """The pull's progress, written as JSON lines to `out`; safe to update from the download threads."""

    def __init__(self, progress: PullProgress, out: TextIO):
        self.progress = progress
        self.out = out
        self.started = time.monotonic()
        self.done: dict[str, int] = {}
        self._lock = threading.Lock()
        self._last = 0.0

    def update(self, **fields) -> None:
        with self._lock:
            self.progress = msgspec.structs.replace(self.progress, **fields)
            self._emit()

    def bytes(self, path: str, n: int, absolute: bool = False) -> None:
        with self._lock:
            self.done[path] = n if absolute else self.done.get(path, 0) + n
            if time.monotonic() - self._last >= REPORT_EVERY:
                self._emit()

    def file_done(self, path: str, size: int) -> None:
        self.bytes(path, size, absolute=True)
        with self._lock:
            self._emit()

    def _emit(self) -> None:
        files = [FileProgress(path=f.path, size=f.size, done=self.done.get(f.path, 0)) for f in self.progress.files]
        self.progress = msgspec.structs.replace(self.progress, files=files, seconds=time.monotonic() - self.started)
        self.out.write(msgspec.json.encode(self.progress).decode() + "\n")
        self.out.flush()
        self._last = time.monotonic()


class FileBar:
    """What huggingface_hub takes for a tqdm class: it counts one file's bytes into the Reporter."""

    def __init__(self, reporter: Reporter, path: str, total: int | None = None, initial: int = 0, **_):
        self.reporter, self.path = reporter, path
        reporter.bytes(path, initial or 0, absolute=True)

    def update(self, n: float | None = 1) -> None:
        self.reporter.bytes(self.path, int(n or 0))

    def __enter__(self) -> FileBar:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None  # refresh, close, set_postfix_str, ...: nothing to draw


def pull(repo: str, revision: str | None, name: str, store: Path, options: ConvertOptions, force: bool,
         reporter: Reporter) -> Path:  # fmt: skip
    """Download (and convert) `repo` at `revision` into `store/name`; returns the model's directory."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.hf_api import RepoFile

    check_name(name)
    check_options(options)
    final = store / name
    if final.exists() and not force:
        raise PullError(f"{final} already exists (pull with --force to replace it)")
    api = HfApi()
    commit = api.model_info(repo, revision=revision).sha
    files = [f for f in api.list_repo_tree(repo, revision=commit, recursive=True) if isinstance(f, RepoFile)]
    files = sorted((f for f in files if wanted(f.path)), key=lambda f: f.path)
    if not any(f.path.endswith(".safetensors") for f in files) or not any(f.path == "config.json" for f in files):
        listed = ", ".join(f.path for f in files) or "none"
        raise PullError(f"{repo} has no config.json and safetensors weights for mlx-lm (files it would use: {listed})")
    download = partial_dir(store, name)
    for stale in (download / ".cache").rglob("*.incomplete"):
        stale.unlink()  # a killed pull's temporary file: huggingface_hub never reuses one
    reporter.update(
        state=PullState.DOWNLOADING, commit=commit, files=[FileProgress(path=f.path, size=f.size) for f in files],
        message=f"{len(files)} files at commit {commit[:12]}",
    )  # fmt: skip

    def fetch(f) -> None:
        bar = functools.partial(FileBar, reporter, f.path)
        hf_hub_download(repo, f.path, revision=commit, local_dir=download, tqdm_class=bar)
        reporter.file_done(f.path, f.size)

    with ThreadPoolExecutor(DOWNLOADS_AT_ONCE) as pool:
        for done in [pool.submit(fetch, f) for f in files]:
            done.result()
    delete(download / ".cache")  # huggingface_hub's bookkeeping for the download: not part of the model
    ready = download
    if options.converts:
        ready = store / f".convert-{name}"
        delete(ready)
        what = f"quantizing to {options.q_bits} bits, group {options.q_group_size}" if options.quantize else ""
        cast = f"casting to {options.dtype}" if options.dtype else ""
        reporter.update(state=PullState.CONVERTING, message=" and ".join(p for p in (cast, what) if p))
        from mlx_lm import convert

        try:
            convert(hf_path=str(download), mlx_path=str(ready), quantize=options.quantize, q_bits=options.q_bits,
                    q_group_size=options.q_group_size, dtype=options.dtype)  # fmt: skip
        except BaseException:
            delete(ready)
            raise
    write_metadata(
        ready, source=f"hf:{repo}", revision=revision or "main", commit=commit,
        convert=msgspec.to_builtins(options) if options.converts else None,
    )  # fmt: skip
    replaced = take_away(final) if final.exists() else None
    ready.rename(final)
    for leftover in (replaced, download if ready != download else None):
        if leftover is not None:
            delete(leftover)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m supervisor.model_pull", description=__doc__.splitlines()[0])
    parser.add_argument("repo")
    parser.add_argument("--store", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--revision")
    parser.add_argument("--pull-id", default="")
    parser.add_argument("--options", default="{}", help="ConvertOptions as JSON")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    # Progress owns the real stdout; whatever else writes to stdout (mlx-lm's convert prints) goes to stderr.
    progress_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    start = PullProgress(pull_id=args.pull_id, repo=args.repo, revision=args.revision or "main", name=args.name,
                         state=PullState.RESOLVING)  # fmt: skip
    reporter = Reporter(start, progress_out)
    try:
        options = msgspec.json.decode(args.options, type=ConvertOptions)
        path = pull(args.repo, args.revision, args.name, Path(args.store), options, args.force, reporter)
    except Exception as exc:  # every failure ends the job with its reason, for the operator to read
        reporter.update(state=PullState.FAILED, message=failure_message(exc))
        return 1
    reporter.update(state=PullState.DONE, path=str(path), message="")
    return 0


def failure_message(exc: Exception) -> str:
    """huggingface_hub's errors carry the request's details on further lines; the first says what went wrong."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


if __name__ == "__main__":
    sys.exit(main())
