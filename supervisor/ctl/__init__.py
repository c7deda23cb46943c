"""Operator commands, one module each (after Circus). A command module has:

- its docstring: the help text `supervisor ctl --help` shows;
- `add_arguments(parser)`: its arguments;
- `run(client, args, out) -> int`: the work, against a CtlClient (or a fake one in tests); the exit code.
"""

from supervisor.ctl import import_model, load, memory, pin, ps, status, unload, unpin

COMMANDS = {
    "load": load,
    "unload": unload,
    "pin": pin,
    "unpin": unpin,
    "ps": ps,
    "memory": memory,
    "status": status,
    "import": import_model,
}
