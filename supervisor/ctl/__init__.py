"""Ctl commands, one module each (after Circus). A module holds what one command is, at both ends:

- its docstring: the help `supervisor ctl --help` shows;
- `add_arguments(parser)`: its arguments;
- `run(client, args, out) -> int`: the operator's side, against a CtlClient (or a fake one in tests): it sends
  the call and prints the reply; returns the exit code;
- `REQUEST` and `async execute(supervisor, call) -> reply`: the supervisor's side, for the call type it sends
  (the types live in protocol/ctl.py and protocol/store.py, as gateways send some of them). A call raises
  FleetError (or NameRefused) to fail with a code; the daemon turns that into CallFailed.

Commands that send a call another module answers (`unpin` sends Pin, `ps` sends Status, `memory` sends
ListModels) have no `execute`; calls only gateways send (EnsureLoaded, ListModels, Heartbeat, Plan), and those
only other hosts send (ReserveRanks, StartRanks, RankLease, StopRanks), have a module with no CLI part; `import`
and `keygen` need no supervisor. The daemon dispatches each decoded call by its type through HANDLERS. How they
print (rich tables, plain text, --json) is format.py's.
"""

from supervisor.ctl import (
    alias,
    aliases,
    cancel_pull,
    ensure_loaded,
    heartbeat,
    import_model,
    keygen,
    list_models,
    load,
    memory,
    models,
    pin,
    plan,
    ps,
    pull,
    pulls,
    rank_lease,
    reserve_ranks,
    rm,
    service,
    start_ranks,
    status,
    stop_ranks,
    unalias,
    unload,
    unpin,
)

# The operator's commands, in the order `supervisor ctl --help` lists them.
COMMANDS = {
    "load": load,
    "unload": unload,
    "pin": pin,
    "unpin": unpin,
    "ps": ps,
    "memory": memory,
    "status": status,
    "pull": pull,
    "pulls": pulls,
    "cancel-pull": cancel_pull,
    "models": models,
    "rm": rm,
    "import": import_model,
    "keygen": keygen,
    "alias": alias,
    "unalias": unalias,
    "aliases": aliases,
    "service": service,
}

# Commands that show one host: with a fleet they take --all (every host in turn), as every command takes --host.
PER_HOST_VIEWS = ("ps", "memory", "status")

# Call type -> the supervisor's handler for it.
SERVED = (ensure_loaded, list_models, load, unload, pin, status, heartbeat, plan, alias, unalias, aliases, pull, pulls,
          cancel_pull, models, rm, reserve_ranks, start_ranks, rank_lease, stop_ranks)  # fmt: skip
HANDLERS = {module.REQUEST: module.execute for module in SERVED}
