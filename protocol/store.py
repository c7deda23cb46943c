"""Calls about the model store, answered by the supervisor of the host whose store it is: pull a model from a
Hugging Face hub (a job the supervisor runs and reports on), list what the store holds, remove a model that no
running model uses."""

from __future__ import annotations

from enum import StrEnum

import msgspec

from protocol.codec import Call, Message


class PullState(StrEnum):
    RESOLVING = "resolving"  # asking the hub which commit the revision names and which files it holds
    DOWNLOADING = "downloading"
    CONVERTING = "converting"  # mlx-lm's convert: quantizing, or casting to another dtype
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (PullState.DONE, PullState.FAILED, PullState.CANCELLED)


class ConvertOptions(msgspec.Struct, frozen=True, kw_only=True):
    """mlx-lm's convert, with the options of the seeds' conversion script."""

    quantize: bool = False
    q_bits: int = 4
    q_group_size: int = 64
    dtype: str | None = None  # float16, bfloat16 or float32; None: as the checkpoint says

    @property
    def converts(self) -> bool:
        return self.quantize or self.dtype is not None


class Pull(Call, tag="pull"):
    """Download `repo` into the store (then convert it if asked); answered at once with the pull's progress."""

    repo: str  # org/name on the hub the supervisor reaches (HF_ENDPOINT in its environment)
    revision: str | None = None  # a branch, tag or commit; None: the repo's default branch
    name: str | None = None  # its directory in the store; None: the repo's name
    convert: ConvertOptions = ConvertOptions()
    force: bool = False  # replace a model of that name


class PullStatus(Call, tag="pull_status"):
    pull_id: str | None = None  # None: every pull since the supervisor started, oldest first


class CancelPull(Call, tag="cancel_pull"):
    pull_id: str


class FileProgress(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    size: int
    done: int = 0


class PullProgress(msgspec.Struct, frozen=True, kw_only=True):
    pull_id: str
    repo: str
    revision: str  # as asked
    name: str
    state: PullState
    commit: str | None = None  # the commit the revision resolved to: what the store's metadata pins
    files: list[FileProgress] = []
    message: str = ""  # what happens now, or why it failed
    path: str | None = None  # the model's directory, once done
    seconds: float = 0.0  # since it started

    @property
    def bytes_done(self) -> int:
        return sum(f.done for f in self.files)

    @property
    def bytes_total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class Pulls(Message, tag="pulls"):
    call_id: str
    pulls: list[PullProgress]


class ListStore(Call, tag="list_store"):
    """What the model store holds."""


class StoredModel(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    size_bytes: int
    source: str = ""  # hf:org/name, bundled:NAME, or the file or directory it was imported from; "" if unknown
    revision: str | None = None  # as pulled
    commit: str | None = None  # what the revision was when pulled
    quantization: str = ""  # e.g. "4-bit, group 64", or the weights' dtype
    used_by: list[str] = []  # configured models whose source (or draft) is this directory
    added: str = ""  # when it was pulled or imported (ISO 8601, UTC)
    partial: bool = False  # a pull that did not finish: pulling again resumes it, `ctl rm` removes it


class StoreList(Message, tag="store_list"):
    call_id: str
    store: str  # the directory
    models: list[StoredModel]


class RemoveStored(Call, tag="remove_stored"):
    """Remove a model (or an unfinished pull) from the store; refused while a running model uses it."""

    name: str


class RemovedStored(Message, tag="removed_stored"):
    call_id: str
    name: str
    freed_bytes: int
    configured: list[str] = []  # configured models that still name it: their next load fails


STORE_CALLS = (Pull, PullStatus, CancelPull, ListStore, RemoveStored)
STORE_REPLIES = (Pulls, StoreList, RemovedStored)
