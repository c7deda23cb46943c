"""Operator commands, one module each (after Circus). A command module has:

- its docstring: the help text `supervisor ctl --help` shows;
- `add_arguments(parser)`: its arguments;
- `run(client, args, out) -> int`: the work, against a CtlClient (or a fake one in tests); the exit code.
"""

from supervisor.ctl import import_model, load, ps, status, unload

COMMANDS = {"load": load, "unload": unload, "ps": ps, "status": status, "import": import_model}
