"""The plugin registry: built-ins through entry points, broken plugins reported by name."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from fastapps_auth import PluginError, Stage, registry
from fastapps_auth.registry import GROUP, _info


def test_builtins_are_registered_through_entry_points() -> None:
    names = registry.names()
    for name in ("jwt", "user-status", "rate-limit", "scopes", "audit"):
        assert name in names


def test_jwt_loads_as_a_stage_with_its_distribution() -> None:
    info = registry.get("jwt")
    assert info is not None and info.component is not None, info and info.error
    assert issubclass(info.component, Stage)
    assert info.distribution == "fastapps-auth"


def test_a_plugin_that_fails_to_import_is_reported_by_name() -> None:
    ep = EntryPoint(name="broken-thing", value="fastapps_auth_no_such_module:Stage", group=GROUP)
    info = _info("broken-thing", [ep])
    assert info.component is None and info.kind == "broken"
    assert info.error is not None and "fastapps_auth_no_such_module" in info.error


def test_an_entry_point_that_is_not_a_stage_is_reported() -> None:
    ep = EntryPoint(name="not-a-stage", value="fastapps_auth.fingerprint:fingerprint", group=GROUP)
    info = _info("not-a-stage", [ep])
    assert info.component is None and info.error is not None and "not a Stage or Observer" in info.error


def test_two_distributions_claiming_one_name_is_reported() -> None:
    eps = [
        EntryPoint(name="dup", value="a:A", group=GROUP),
        EntryPoint(name="dup", value="b:B", group=GROUP),
    ]
    info = _info("dup", eps)
    assert info.error is not None and "more than once" in info.error


def test_loading_an_unknown_name_is_a_plugin_error() -> None:
    with pytest.raises(PluginError, match="unknown plugin 'no-such-plugin'"):
        registry.load("no-such-plugin")


def test_register_refuses_non_components() -> None:
    with pytest.raises(TypeError):
        registry.register("x", object)  # type: ignore[arg-type]
