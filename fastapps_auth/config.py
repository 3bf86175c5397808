"""Build a chain from TOML (or a dict of the same shape).

``${VAR}`` and ``${VAR:-default}`` are read from the environment (``$$`` is a
literal ``$``). Unknown keys, wrong types, missing variables and unknown
plugins are ``ConfigError``s that name the file, the stage and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapps_auth.chain import AnyOf, VerifierChain, authenticates
from fastapps_auth.clock import Clock
from fastapps_auth.component import Component
from fastapps_auth.errors import ConfigError
from fastapps_auth.observer import Observer
from fastapps_auth.registry import load
from fastapps_auth.stage import Stage

#: ``$$``, ``${NAME}``, ``${NAME:-default}`` (a default holds no ``${``), or a stray ``${`` (an error).
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-((?:[^}$]|\$(?!\{))*))?\}|\$\{")
_TOP_KEYS = {"stages", "chain"}
_CHAIN_KEYS = {"name"}
#: Plugins whose ``stages`` option holds nested stage tables.
_COMPOSITES: dict[str, type[Stage[Any]]] = {"chain": VerifierChain, "any-of": AnyOf}


def interpolate(value: Any, env: Mapping[str, str], *, key: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of ``value``."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name is None:
                raise ConfigError(
                    "a '${' that is not ${NAME} or ${NAME:-default} (write $${ for a literal '${')", key=key
                )
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(
                f"environment variable {name} is not set (write ${{{name}:-default}} for a default)", key=key
            )

        return _VAR.sub(sub, value)
    if isinstance(value, Mapping):
        return {k: interpolate(v, env, key=f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, key=f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def read_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The raw config mapping and a label for messages (the file name, or ``<config>``)."""
    if isinstance(source, Mapping):
        return dict(source), "<config>"
    path = Path(source)
    label = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("file not found", source=label) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=label) from None
    except ValueError as exc:  # a NUL byte in the path
        raise ConfigError(f"cannot read: {exc}", source=label) from None
    try:
        # TOML is UTF-8; a byte-order mark (Windows editors write one) is not part of the text.
        return tomllib.loads(data.decode("utf-8-sig")), label
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid TOML: not UTF-8 (byte {exc.start})", source=label) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=label) from None


def _stage_label(index: str, entry: object) -> str:
    if not isinstance(entry, Mapping):
        return f"stages{index}"
    use = entry.get("use")
    name = entry.get("name")
    shown = name if isinstance(name, str) else use if isinstance(use, str) else "?"
    return f"stages{index} ({shown})"


def build_component(
    entry: Mapping[str, Any], *, index: str, clock: Clock | None, env: Mapping[str, str]
) -> Component[Any]:
    """One ``[[stages]]`` table, built by its plugin name. Errors name the stage and key."""
    label = _stage_label(index, entry)
    if not isinstance(entry, Mapping):
        raise ConfigError(f"each stage must be a table (got {type(entry).__name__})", stage=label)
    use = entry.get("use")
    if not isinstance(use, str) or not use:
        raise ConfigError("missing 'use' (the plugin name, e.g. use = \"jwt\")", stage=label, key="use")
    options = {k: v for k, v in entry.items() if k != "use"}
    try:
        options = interpolate(options, env)
        if use in _COMPOSITES:
            return _build_composite(use, options, index=index, label=label, clock=clock, env=env)
        cls = load(use)
        return cls(clock=clock, **options)
    except ConfigError as exc:
        inner = exc.location.stage
        stage = inner if inner and inner.startswith("stages") else label
        raise type(exc)(exc.detail, stage=stage, key=exc.location.key) from None


def _build_composite(
    use: str, options: dict[str, Any], *, index: str, label: str, clock: Clock | None, env: Mapping[str, str]
) -> Stage[Any]:
    children = options.pop("stages", None)
    unknown = set(options) - {"name", "enforce"}
    if unknown:
        raise ConfigError("unknown option (known options: enforce, name, stages)", stage=label, key=sorted(unknown)[0])
    if not isinstance(children, list) or not children:
        raise ConfigError("needs a non-empty list of stage tables", stage=label, key="stages")
    enforce = options.get("enforce", True)
    if not isinstance(enforce, bool):
        raise ConfigError(f"must be true or false (got {enforce!r})", stage=label, key="enforce")
    built = [build_component(c, index=f"{index}.stages[{i}]", clock=clock, env=env) for i, c in enumerate(children)]
    stages = [b for b in built if isinstance(b, Stage)]
    if len(stages) != len(built):
        raise ConfigError("observers cannot be nested inside a composite stage", stage=label, key="stages")
    name = options.get("name")
    if use == "any-of":
        return AnyOf(*stages, name=name, clock=clock, enforce=enforce)
    return VerifierChain(*stages, name=name, clock=clock, enforce=enforce)


def _require_authentication(stages: list[Stage[Any]]) -> None:
    """A chain none of whose stages authenticates refuses every token ("unauthenticated"): say so now."""
    if any(authenticates(s) for s in stages):
        return
    names = ", ".join(s.name for s in stages)
    hint = ""
    partial = next((s for s in stages if isinstance(s, AnyOf) and any(authenticates(a) for a in s.alternatives)), None)
    if partial is not None:
        others = ", ".join(a.name for a in partial.alternatives if not authenticates(a))
        hint = f"; an any-of authenticates only if every alternative does ({partial.name!r}: {others} does not)"
    raise ConfigError(
        f"no stage authenticates the token (stages: {names}), so every request would be refused: "
        f'add one, e.g. use = "jwt"{hint}',
        key="stages",
    )


def chain_from_config(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> VerifierChain:
    """Build a ``VerifierChain`` from a TOML file or a mapping of the same shape.

    No network or database I/O happens here: resources open on first use.
    """
    data, label = read_config(source)
    environ = os.environ if env is None else env
    try:
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise ConfigError(f"unknown top-level key (known: {', '.join(sorted(_TOP_KEYS))})", key=sorted(unknown)[0])
        chain_opts = data.get("chain", {})
        if not isinstance(chain_opts, Mapping) or set(chain_opts) - _CHAIN_KEYS:
            raise ConfigError("[chain] accepts only: name", key="chain")
        entries = data.get("stages")
        if not isinstance(entries, list) or not entries:
            raise ConfigError("needs at least one [[stages]] table", key="stages")
        stages: list[Stage[Any]] = []
        observers: list[Observer[Any]] = []
        for i, entry in enumerate(entries):
            component = build_component(entry, index=f"[{i}]", clock=clock, env=environ)
            if isinstance(component, Observer):
                observers.append(component)
            elif isinstance(component, Stage):
                stages.append(component)
            else:
                raise ConfigError("plugin is neither a stage nor an observer", stage=_stage_label(f"[{i}]", entry))
        if not stages:
            raise ConfigError("needs at least one stage that verifies tokens", key="stages")
        _require_authentication(stages)
        name = interpolate(chain_opts.get("name"), environ, key="chain.name") if chain_opts.get("name") else None
        return VerifierChain(*stages, observers=observers, clock=clock, name=name)
    except ConfigError as exc:
        raise type(exc)(exc.detail, source=label, stage=exc.location.stage, key=exc.location.key) from None
