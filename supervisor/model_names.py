"""How the name a request gives becomes a configured model, in the seeds' order (MLX Studio's resolution chain):

1. an id or alias: the config file's, then those added at run time;
2. a wildcard alias (`*`, `?`, `[...]`), the longest matching pattern first (`claude-3-*` before `claude-*`);
3. a Claude tier: a `claude-*` name holding haiku, sonnet or opus, mapped by `claude_tiers`;
4. the fallback model, where `fallback_model` is set and the caller accepts one (requests do, operator commands
   do not: `ctl unload typo` must not unload the fallback).

The empty name is the default model. Aliases added at run time (`ctl alias`, POST /api/v1/aliases) are kept in
one JSON file in the model store ({alias: model id}), so they survive restarts; the config file's names always
win, and an alias whose model left the config is dropped at start-up with a warning.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from pathlib import Path

from protocol import ErrorCode
from protocol.ctl import AliasEntry

log = logging.getLogger("supervisor.names")

CLAUDE_TIERS = ("haiku", "sonnet", "opus")
WILDCARDS = "*?["
RUNTIME_ALIASES_FILE = ".aliases.json"  # in the model store: hidden, so never taken for a model
MAX_ALIAS_LENGTH = 128


class NameRefused(ValueError):
    """An alias the table cannot take or give up; `code` is the protocol's reason."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code


def claude_tier(name: str) -> str | None:
    """haiku, sonnet or opus for a Claude model name (claude-3-5-haiku-20241022, claude-sonnet-4-5, ...)."""
    if not name.startswith("claude-"):
        return None
    parts = name.split("-")
    return next((tier for tier in CLAUDE_TIERS if tier in parts), None)


def is_pattern(name: str) -> bool:
    return any(c in name for c in WILDCARDS)


class ModelNames:
    """Every name that leads to a model: the config's ids, aliases and tiers, and the aliases added at run time."""

    def __init__(self, aliases: dict[str, list[str]], claude_tiers: dict[str, str], runtime_file: Path):
        """`aliases`: each model id's aliases, in config order (the config's own checks have run)."""
        self._names: dict[str, str] = {}  # exact name -> model id
        self._patterns: dict[str, str] = {}  # wildcard alias -> model id
        for model_id, names in aliases.items():
            for name in (model_id, *names):
                if name in self._names or name in self._patterns:
                    raise ValueError(f"model name {name!r} is used twice in the config")
                table = self._patterns if name != model_id and is_pattern(name) else self._names
                table[name] = model_id
        for tier, target in claude_tiers.items():
            if target not in self._names:
                raise ValueError(f"claude_tiers.{tier}: {target!r} is not a configured model id or alias")
        self._tiers = {tier: self._names[target] for tier, target in claude_tiers.items()}
        self._file = runtime_file
        self._runtime = self._read_runtime(set(aliases))

    def configured(self, name: str) -> str | None:
        """The model id the config file gives `name` (an id or a plain alias), if any."""
        return self._names.get(name)

    def resolve(self, name: str) -> str | None:
        """The model id `name` leads to by steps 1-3 (the fallback is the caller's), else None."""
        model_id = self._names.get(name) or self._runtime.get(name)
        if model_id is None:
            model_id = next((m for p, m in self._sorted_patterns() if fnmatch.fnmatchcase(name, p)), None)
        if model_id is None:
            model_id = self._tiers.get(claude_tier(name))
        return model_id

    def why_unknown(self, name: str, known: list[str]) -> str:
        """Why `name` leads to no model, for the error a client reads (naming only the `known` models)."""
        tier = claude_tier(name)
        if tier is not None:
            configured = ", ".join(sorted(self._tiers)) or "none"
            return f"no local model serves the Claude {tier} tier (configured tiers: {configured})"
        if name.startswith("claude"):
            return f"'{name}' names no Claude tier ({', '.join(CLAUDE_TIERS)}) and no alias matches it"
        return f"the model '{name}' does not exist (known: {', '.join(sorted(known))})"

    def aliases_of(self, model_id: str) -> list[str]:
        """Every alias of a model, the config's first."""
        return [e.alias for e in self.entries() if e.model == model_id]

    def entries(self) -> list[AliasEntry]:
        config = [AliasEntry(alias=a, model=m) for a, m in (*self._names.items(), *self._patterns.items()) if a != m]
        runtime = [AliasEntry(alias=a, model=m, runtime=True) for a, m in sorted(self._runtime.items())]
        return config + runtime

    # -- aliases added at run time ------------------------------------------------------------------------

    def add(self, alias: str, model_id: str) -> None:
        """Name `model_id` (a configured model) `alias` too, from now on and after restarts."""
        if not alias or len(alias) > MAX_ALIAS_LENGTH or any(c.isspace() or not c.isprintable() for c in alias):
            raise NameRefused(
                ErrorCode.INVALID_REQUEST,
                f"an alias is 1 to {MAX_ALIAS_LENGTH} printable characters without spaces",
            )
        owner = self._names.get(alias) or self._patterns.get(alias)
        if owner is not None:
            raise NameRefused(ErrorCode.CONFLICT, f"'{alias}' is a name of {owner} in the config file")
        self._runtime[alias] = model_id
        self._write_runtime()

    def remove(self, alias: str) -> str:
        """Remove an alias added at run time; returns the model it named."""
        if alias not in self._runtime:
            if alias in self._names or alias in self._patterns:
                raise NameRefused(ErrorCode.CONFLICT, f"'{alias}' is in the config file: edit the file to remove it")
            raise NameRefused(ErrorCode.NOT_FOUND, f"no alias '{alias}' was added at run time")
        model_id = self._runtime.pop(alias)
        self._write_runtime()
        return model_id

    def _sorted_patterns(self) -> list[tuple[str, str]]:
        runtime = ((a, m) for a, m in self._runtime.items() if is_pattern(a))
        return sorted((*self._patterns.items(), *runtime), key=lambda entry: -len(entry[0]))

    def _read_runtime(self, model_ids: set[str]) -> dict[str, str]:
        try:
            saved = json.loads(self._file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("aliases added at run time not read from %s: %s", self._file, exc)
            return {}
        kept = {}
        for alias, model_id in saved.items() if isinstance(saved, dict) else ():
            if model_id not in model_ids:
                log.warning("alias %r dropped: its model %r is no longer configured", alias, model_id)
            elif alias in self._names or alias in self._patterns:
                log.warning("alias %r dropped: the config file now uses that name", alias)
            else:
                kept[alias] = model_id
        return kept

    def _write_runtime(self) -> None:
        """Atomically: a crash mid-write leaves the previous table, never half of one."""
        self._file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._file.with_name(f"{self._file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._runtime, indent=1, sort_keys=True))
        os.replace(tmp, self._file)
