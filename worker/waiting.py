"""The requests an engine has accepted but not started, in arrival order."""

from __future__ import annotations

from collections import deque


class Waiting(deque):
    def drop(self, request_id: str) -> bool:
        """Remove the request with this id; whether it was waiting."""
        for request in self:
            if request.request_id == request_id:
                self.remove(request)
                return True
        return False
