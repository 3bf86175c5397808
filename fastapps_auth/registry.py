"""Plugins: stages and observers found through the ``fastapps_auth.stages`` entry-point group.

Built-ins are registered through the project's own ``pyproject.toml``, the same
door third-party packages use. A plugin that fails to load is reported with its
name and distribution and does not hide the others (pluggy's habit).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from fastapps_auth.component import Component, ComponentOptions
from fastapps_auth.errors import PluginError

GROUP = "fastapps_auth.stages"


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One registered plugin, loaded or not."""

    name: str
    value: str
    distribution: str | None
    version: str | None
    component: type[Component[Any]] | None = None
    error: str | None = None

    @property
    def kind(self) -> str:
        return self.component.kind if self.component is not None else "broken"

    @property
    def label(self) -> str:
        dist = f"{self.distribution} {self.version}" if self.distribution else "unknown distribution"
        return f"'{self.name}' ({dist})"


_lock = threading.Lock()
_entry_points: dict[str, list[EntryPoint]] | None = None
_loaded: dict[str, PluginInfo] = {}
_registered: dict[str, type[Component[Any]]] = {}


def _scan() -> dict[str, list[EntryPoint]]:
    global _entry_points
    with _lock:
        if _entry_points is None:
            found: dict[str, list[EntryPoint]] = {}
            for ep in entry_points(group=GROUP):
                found.setdefault(ep.name, []).append(ep)
            _entry_points = found
        return _entry_points


def refresh() -> None:
    """Forget what was discovered (after installing a plugin into the running interpreter)."""
    global _entry_points
    with _lock:
        _entry_points = None
        _loaded.clear()


def _not_a_component(obj: object) -> str | None:
    """Why ``obj`` cannot be built from config, or ``None`` if it is a usable component class."""
    if not (isinstance(obj, type) and issubclass(obj, Component)):
        return "is not a Stage or Observer class"
    model = obj.options_model
    if not (isinstance(model, type) and issubclass(model, ComponentOptions)):
        return f"has an options_model that is not a ComponentOptions model: {model!r}"
    return None


def register(name: str, component: type[Component[Any]]) -> None:
    """Register a component class in-process (tests, notebooks). Entry points are the normal way."""
    problem = _not_a_component(component)
    if problem is not None:
        raise TypeError(f"{name}: {component!r} {problem}")
    _registered[name] = component


def unregister(name: str) -> None:
    _registered.pop(name, None)


def _info(name: str, eps: list[EntryPoint]) -> PluginInfo:
    ep = eps[0]
    dist = ep.dist.name if ep.dist is not None else None
    version = ep.dist.version if ep.dist is not None else None
    if len({e.value for e in eps}) > 1:
        others = ", ".join(f"{e.value} ({e.dist.name if e.dist else '?'})" for e in eps)
        return PluginInfo(name, ep.value, dist, version, error=f"registered more than once: {others}")
    try:
        obj = ep.load()
    except (Exception, SystemExit) as exc:  # any import failure of a third-party plugin, sys.exit() included
        return PluginInfo(
            name, ep.value, dist, version, error=f"failed to load {ep.value}: {type(exc).__name__}: {exc}"
        )
    problem = _not_a_component(obj)
    if problem is not None:
        return PluginInfo(name, ep.value, dist, version, error=f"{ep.value} {problem}")
    return PluginInfo(name, ep.value, dist, version, component=obj)


def get(name: str) -> PluginInfo | None:
    """The plugin registered as ``name`` (loaded), or ``None`` if no such name exists."""
    if name in _registered:
        cls = _registered[name]
        return PluginInfo(name, f"{cls.__module__}:{cls.__qualname__}", None, None, component=cls)
    if name in _loaded:
        return _loaded[name]
    eps = _scan().get(name)
    if not eps:
        return None
    info = _info(name, eps)
    with _lock:
        _loaded[name] = info
    return info


def load(name: str) -> type[Component[Any]]:
    """The component class registered as ``name``; ``PluginError`` if unknown or broken."""
    info = get(name)
    if info is None:
        known = ", ".join(sorted(names())) or "none"
        raise PluginError(f"unknown plugin '{name}' (installed: {known})", key="use")
    if info.component is None:
        raise PluginError(f"plugin {info.label} is broken: {info.error}", key="use")
    return info.component


def names() -> list[str]:
    """Every registered name, loaded or not."""
    return sorted({*_scan(), *_registered})


def plugins() -> list[PluginInfo]:
    """Every plugin, loaded; broken ones carry ``error`` instead of a component."""
    out: list[PluginInfo] = []
    for name in names():
        info = get(name)
        if info is not None:
            out.append(info)
    return out
