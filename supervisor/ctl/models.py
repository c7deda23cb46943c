"""List the models in the store: name, where each came from (hub repo, revision and commit, or what it was imported
from), size on disk, quantization, and the configured models that use it. Unfinished pulls are listed too."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from protocol.store import ListStore, StoreList
from supervisor.ctl.format import filesize, json_flag, print_json, show, styled, table
from supervisor.model_store import describe, entries

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = ListStore


def add_arguments(parser) -> None:
    json_flag(parser)


def run(client, args, out) -> int:
    reply = client.call(lambda call_id: ListStore(call_id=call_id))
    if args.json:
        return print_json(reply, out)
    rows = [
        [
            styled("starting", f"{m.name} (unfinished pull)") if m.partial else m.name,
            m.source or "-",
            (m.revision or "") + (f" ({m.commit[:12]})" if m.commit else "") or "-",
            filesize(m.size_bytes),
            m.quantization or "-",
            ", ".join(m.used_by) or "-",
        ]
        for m in reply.models
    ]
    headers = ["NAME", "SOURCE", "REVISION", "SIZE", "QUANTIZATION", "USED BY"]
    show(out, f"model store {reply.store}", table(headers, rows))
    return 0


async def execute(supervisor: Supervisor, call: ListStore) -> StoreList:
    config = supervisor.fleet.config
    users: dict[str, list[str]] = {}
    for slot in supervisor.fleet.slots.values():
        for source in {slot.source, slot.draft_source} - {None}:
            users.setdefault(source, []).append(slot.spec.id)

    def scan():  # sizes walk every file: off the event loop
        return [describe(path, users.get(str(path), [])) for path in entries(config.store)]

    return StoreList(call_id=call.call_id, store=str(config.store), models=await asyncio.to_thread(scan))
