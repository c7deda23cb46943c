"""OpenAI's cursor pages (`limit`, `after`; `first_id`, `last_id`, `has_more`), for the lists the gateway keeps:
stored responses' input items, batches."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.errors import APIError
from protocol import ErrorCode

MAX_LIMIT = 100


def page(items: list[dict], query: Mapping[str, str], default_limit: int = 20) -> dict:
    """`items` (in the order to list them) from the one after `after`, `limit` (1 to 100) of them."""
    try:
        limit = int(query.get("limit", default_limit))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise APIError(ErrorCode.INVALID_REQUEST, f"limit must be an integer from 1 to {MAX_LIMIT}", "limit")
    after = query.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise APIError(ErrorCode.INVALID_REQUEST, f"No item '{after}' in this list", "after")
        items = items[ids.index(after) + 1 :]
    shown = items[:limit]
    return {
        "object": "list",
        "data": shown,
        "first_id": shown[0]["id"] if shown else None,
        "last_id": shown[-1]["id"] if shown else None,
        "has_more": len(items) > limit,
    }
