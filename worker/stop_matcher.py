"""Stop sequences over a stream of text segments.

Text that could still turn out to be the start of a stop sequence is held back, so a client never receives a
prefix of a stop string that the final answer does not contain.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: list[str]):
        self._stops = [s for s in stops if s]
        self._text = ""
        self._sent = 0
        self.stopped = False
        self.matched: str | None = None  # the stop sequence found

    def feed(self, segment: str) -> str:
        """Add generated text; return what is now safe to send. Sets `stopped` when a stop sequence appears."""
        self._text += segment
        if not self._stops:
            return self._release(len(self._text))
        # A stop string may straddle the boundary with text already sent: search from just before it.
        start = max(0, self._sent - max(map(len, self._stops)) + 1)
        hits = [(i, s) for s in self._stops if (i := self._text.find(s, start)) >= 0]
        if hits:
            self.stopped = True
            at, self.matched = min(hits)
            return self._release(at)
        return self._release(len(self._text) - self._held_back())

    def flush(self) -> str:
        """At the end of generation nothing more can complete a stop sequence: release the rest."""
        return "" if self.stopped else self._release(len(self._text))

    def _held_back(self) -> int:
        return partial_suffix(self._text[self._sent :], self._stops)

    def _release(self, upto: int) -> str:
        upto = max(upto, self._sent)
        out, self._sent = self._text[self._sent : upto], upto
        return out


def partial_suffix(text: str, markers: list[str]) -> int:
    """Length of the longest end of `text` that is a proper prefix of one of `markers`: text to hold back,
    since what comes next may complete the marker."""
    for k in range(min(len(text), max(map(len, markers)) - 1), 0, -1):
        if any(m.startswith(text[-k:]) for m in markers):
            return k
    return 0
