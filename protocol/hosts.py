"""The hosts of a fleet, as the shared config file lists them: read by the supervisor (which host it is, whom it
lets in) and by gateways and operators (where each host is, and its key to check it by).

```yaml
hosts:
  - name: m3-ultra
    endpoint: tcp://10.0.0.10:7100        # its supervisor's ctl plane over TCP (CURVE)
    public_key: fleet/m3-ultra.key        # the host's public key: Z85 text, or a file `ctl keygen` wrote
  - name: m2-voice
    endpoint: tcp://10.0.0.11:7100
    public_key: fleet/m2-voice.key
    memory_budget_gb: 100                 # this host's budget, instead of the file's memory_budget_gb
host_clients: [fleet/gateway.key]         # public keys of the gateways and operators the hosts let in
```

No `hosts:` means one host, this machine, over ipc:// in the run directory, as before.
"""

from __future__ import annotations

import re

import msgspec

HOST_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
LOCAL = "local"  # the name a single host (no `hosts:` in the config) goes by in gateways' views


class HostSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    endpoint: str  # tcp://ADDRESS:PORT where gateways and operators reach its supervisor
    public_key: str  # Z85 (40 characters) or a key file, relative to the config file
    bind: str | None = None  # what the supervisor binds, if not `endpoint` (e.g. tcp://0.0.0.0:7100)
    memory_budget_gb: float | None = None  # default: the config's memory_budget_gb

    def __post_init__(self) -> None:
        if not HOST_NAME.match(self.name) or self.name == LOCAL:
            raise ValueError(f"host name {self.name!r}: lowercase letters, digits, '_' and '-', and not {LOCAL!r}")
        for endpoint in (self.endpoint, self.bind or self.endpoint):
            if not re.match(r"^tcp://[^:]+:\d+$", endpoint) and not re.match(r"^tcp://\[[0-9a-f:]+\]:\d+$", endpoint):
                raise ValueError(f"host {self.name!r}: {endpoint!r} is not a tcp://ADDRESS:PORT endpoint")
        if self.memory_budget_gb is not None and self.memory_budget_gb <= 0:
            raise ValueError(f"host {self.name!r}: memory_budget_gb must be positive")


def check_hosts(hosts: list[HostSpec]) -> None:
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        raise ValueError(f"hosts: a host name is listed twice ({', '.join(names)})")
    endpoints = [h.endpoint for h in hosts]
    if len(set(endpoints)) != len(endpoints):
        raise ValueError("hosts: two hosts share an endpoint")
