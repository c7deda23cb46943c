"""Ctl commands, one module each (after Circus). A module holds what one command is, at both ends:

- its docstring: the help `supervisor ctl --help` shows;
- `add_arguments(parser)`: its arguments;
- `run(client, args, out) -> int`: the operator's side, against a CtlClient (or a fake one in tests): it sends
  the call and prints the reply; returns the exit code;
- `REQUEST` and `async execute(supervisor, call) -> reply`: the supervisor's side, for the call type it sends
  (the types live in protocol/ctl.py, as gateways send some of them). A call raises FleetError to fail
  with a code; the daemon turns that into CallFailed.

Commands that send a call another module answers (`unpin` sends Pin, `ps` sends Status, `memory` sends
ListModels) have no `execute`; calls only gateways send (EnsureLoaded, ListModels, Heartbeat, Plan) have a
module with no CLI part; `import` and `keygen` need no supervisor. The daemon dispatches each decoded call by
its type through HANDLERS.
"""

from supervisor.ctl import (
    ensure_loaded,
    heartbeat,
    import_model,
    keygen,
    list_models,
    load,
    memory,
    pin,
    plan,
    ps,
    status,
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
    "import": import_model,
    "keygen": keygen,
}

# Commands that show one host: with a fleet they take --all (every host in turn), as every command takes --host.
PER_HOST_VIEWS = ("ps", "memory", "status")

# Call type -> the supervisor's handler for it.
HANDLERS = {
    module.REQUEST: module.execute
    for module in (ensure_loaded, list_models, load, unload, pin, status, heartbeat, plan)
}
