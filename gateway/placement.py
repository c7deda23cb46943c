"""Which host serves a model: decided here, and only here, in a gateway.

One host (no `hosts:` in the config): that one, and its supervisor resolves the name. A fleet: every host up is
asked for its Plan of the model (in parallel; each answers from its own memory budget without acting), then
1. among the hosts where it is ready: with an affinity key (a session) the same replica every time, by
   rendezvous hashing, so that replica's prompt cache is hit and a replica coming or going moves only its own
   sessions; without one, the replica with the fewest requests in flight (this gateway's, then as its
   supervisor last counted them), ties taken in turn;
2. else a host where it is loading: one load serves every request waiting for it;
3. else, of the hosts the config allows it on, the one with the most budget left after its own eviction plan
   (where it fits first). That host's supervisor still decides its memory when the load arrives.

Every gateway asks the same supervisors and applies the same rules, so N gateways place alike. A model sharded
over several hosts is placed like any other: only rank 0's host answers that it may run it (its supervisor starts
the other hosts' ranks).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Callable

from gateway.hosts import HostLink, Hosts
from gateway.supervisor_client import HostDown
from protocol.ctl import LoadPlan, ModelState, Plan

InFlight = Callable[[str, str], int]  # (host, model id) -> requests this gateway has in flight there


def choose(plans: dict[str, LoadPlan], in_flight: InFlight, affinity: str | None = None, turn: int = 0) -> str:
    """The host to serve the model the `plans` (host -> its plan) are for; some must allow it (`here`)."""
    here = {host: plan for host, plan in plans.items() if plan.here}
    ready = [host for host, plan in here.items() if plan.state == ModelState.READY]
    if ready and affinity is not None:
        return max(ready, key=lambda host: _weight(affinity, host))
    if ready:
        load = {host: (in_flight(host, here[host].model_id), here[host].in_flight) for host in ready}
        fewest = min(load.values())
        tied = [host for host in ready if load[host] == fewest]
        return tied[turn % len(tied)]
    starting = [host for host, plan in here.items() if plan.state == ModelState.STARTING]
    if starting:
        return starting[0]
    usable = [host for host, plan in here.items() if plan.state != ModelState.FAILED] or list(here)
    return max(usable, key=lambda host: (not here[host].exceeds, here[host].fits, here[host].free_after_bytes))


def _weight(key: str, host: str) -> int:
    """Rendezvous (highest random weight) hashing: each key prefers the host with its highest weight."""
    return int.from_bytes(hashlib.blake2b(f"{key}\0{host}".encode(), digest_size=8).digest(), "big")


class Placement:
    def __init__(self, hosts: Hosts, in_flight: InFlight):
        self.hosts = hosts
        self._in_flight = in_flight
        self._turns = itertools.count()

    async def place(
        self, model: str, allowed: list[str] | None = None, affinity: str | None = None, exclude: set[str] = frozenset()
    ) -> HostLink:
        """The host to send `model`'s request to (see the module's docstring); `exclude` names hosts that just
        failed this request. Raises HostDown when no host that may run it is up, and the supervisors' own
        APIError (unknown model, not allowed) as they answer it."""
        if not self.hosts.fleet:
            return self.hosts.links[0]
        plans = await self.plans(model, allowed, exclude)
        return self.hosts.get(choose(plans, self._in_flight, affinity, next(self._turns)))

    async def plans(self, model: str, allowed: list[str] | None, exclude: set[str] = frozenset()) -> dict:
        """Each host's plan for `model`, of the hosts up that answered and allow it; HostDown if none does."""
        links = await self.hosts.up(exclude)
        timeout = self.hosts.settings.connect_timeout
        answers = await asyncio.gather(
            *(link.client.call(lambda call_id: Plan(call_id=call_id, model=model, allowed=allowed), timeout)
              for link in links),
            return_exceptions=True,
        )  # fmt: skip
        plans: dict[str, LoadPlan] = {}
        for link, answer in zip(links, answers, strict=True):
            if isinstance(answer, HostDown):
                continue
            if isinstance(answer, BaseException):
                raise answer  # unknown model, not allowed: every host answers alike
            plans[link.name] = answer
        if any(plan.here for plan in plans.values()):
            return plans
        if not plans:
            raise HostDown("no host answered (" + "; ".join(f"{h.name}: {h.why_down}" for h in self.hosts.links) + ")")
        plan = next(iter(plans.values()))
        down = "; ".join(f"{h.name}: {h.why_down}" for h in self.hosts.links if h.name in plan.hosts and not h.up)
        raise HostDown(f"{plan.model_id} runs on {', '.join(plan.hosts)}, and none of them is up ({down})")

    async def for_load(self, model: str, host: str | None) -> HostLink:
        """Where an operator's load goes: the host named, else where a request would go."""
        if host is None:
            return await self.place(model)
        link = self.hosts.get(host)
        if self.hosts.fleet and not link.up:
            raise HostDown(f"host {host} is down: {link.why_down}")
        return link
