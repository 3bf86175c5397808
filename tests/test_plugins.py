"""Third-party plugins: real distributions from plugins/ installed into the environment and used by name.

A module-scoped fixture pip-installs ``fastapps-auth-ip-allowlist`` (useful) and
``fastapps-auth-broken-example`` (its module raises ImportError), and uninstalls
whatever it installed afterwards, so other tests never see them.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp.server.auth.provider import AccessToken

from fastapps_auth import (
    ConfigError,
    PluginError,
    RequestInfo,
    Stage,
    StageOptions,
    Verification,
    chain_from_config,
    registry,
    request_context,
)

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = {
    "fastapps-auth-ip-allowlist": ROOT / "plugins" / "fastapps-auth-ip-allowlist",
    "fastapps-auth-broken-example": ROOT / "plugins" / "fastapps-auth-broken-example",
}
CLI = [sys.executable, "-c", "import sys; from fastapps_auth.cli import main; sys.exit(main())"]
TOKEN = "plugin-test-token-0123456789abcdefghij"


def _installed(name: str) -> bool:
    try:
        distribution(name)
    except PackageNotFoundError:
        return False
    return True


def _pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *args],
        check=True,
        env={**os.environ, "PIP_NO_INPUT": "1"},
        timeout=300,
    )


def _rescan() -> None:
    importlib.invalidate_caches()
    registry.refresh()


@pytest.fixture(scope="module")
def installed_plugins() -> Iterator[None]:
    """Both plugin distributions installed (offline: no dependencies, no build isolation), then removed."""
    ours = [name for name in PLUGINS if not _installed(name)]
    for name in ours:
        _pip("install", "--no-deps", "--no-build-isolation", "--no-index", "--no-compile", str(PLUGINS[name]))
    _rescan()
    yield
    if ours:
        _pip("uninstall", "--yes", *ours)
    for module in ("fastapps_auth_ip_allowlist", "fastapps_auth_broken_example"):
        sys.modules.pop(module, None)
    _rescan()


class Auth(Stage[StageOptions]):
    plugin_name: ClassVar[str] = "plugin-test-auth"
    authenticates: ClassVar[bool] = True

    async def __call__(self, v: Verification) -> None:
        v.access_token = AccessToken(token=v.token, client_id="c", scopes=[], subject="alice", claims={})


@pytest.fixture
def auth() -> Iterator[str]:
    registry.register("plugin-test-auth", Auth)
    yield "plugin-test-auth"
    registry.unregister("plugin-test-auth")


def toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "auth.toml"
    path.write_text(body)
    return path


@pytest.mark.usefixtures("installed_plugins")
async def test_a_chain_uses_the_installed_plugin_by_name_from_toml(auth: str, tmp_path: Path) -> None:
    config = toml(
        tmp_path,
        f"""
[[stages]]
use = "{auth}"

[[stages]]
use = "ip-allowlist"
networks = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
""",
    )
    chain = chain_from_config(config)
    assert [type(s).__name__ for s in chain.stages] == ["Auth", "IPAllowlistStage"]

    async def decide(ip: str | None) -> tuple[bool, str | None]:
        with request_context(RequestInfo(method="POST", path="/mcp", client_ip=ip)):
            d = await chain.evaluate(TOKEN)
        return d.allowed, d.reason

    assert await decide("10.20.30.40") == (True, None)
    assert await decide("192.0.2.7") == (True, None)
    assert await decide("::ffff:10.1.1.1") == (True, None)  # IPv4-mapped
    assert await decide("2001:db8::1") == (True, None)
    assert await decide("192.0.2.8") == (False, "ip_not_allowed")
    assert await decide("not-an-ip") == (False, "ip_not_allowed")
    assert await decide(None) == (False, "ip_unknown")
    d = await chain.evaluate(TOKEN)  # no request at all (stdio)
    assert (d.allowed, d.status, d.stage) == (False, 403, "ip-allowlist")
    await chain.aclose()


@pytest.mark.usefixtures("installed_plugins")
def test_plugin_options_are_validated_like_built_ins(auth: str) -> None:
    with pytest.raises(ConfigError) as info:
        chain_from_config({"stages": [{"use": auth}, {"use": "ip-allowlist", "networks": ["10.0.0.0/33"]}]})
    assert info.value.location.key == "networks"
    assert "stages[1] (ip-allowlist)" in str(info.value)
    with pytest.raises(ConfigError) as info:
        chain_from_config({"stages": [{"use": auth}, {"use": "ip-allowlist"}]})
    assert info.value.location.key == "networks"


@pytest.mark.usefixtures("installed_plugins")
def test_registry_reports_the_broken_plugin_and_still_loads_the_others() -> None:
    infos = {p.name: p for p in registry.plugins()}
    good, broken = infos["ip-allowlist"], infos["broken-example"]
    assert good.component is not None
    assert (good.kind, good.distribution, good.version) == ("stage", "fastapps-auth-ip-allowlist", "0.1.0")
    assert broken.component is None
    assert broken.distribution == "fastapps-auth-broken-example"
    assert "ImportError" in (broken.error or "")
    assert "broken on purpose" in (broken.error or "")
    assert infos["audit"].component is not None


@pytest.mark.usefixtures("installed_plugins")
def test_using_the_broken_plugin_is_a_config_error_naming_it(auth: str) -> None:
    with pytest.raises(PluginError) as info:
        chain_from_config({"stages": [{"use": auth}, {"use": "broken-example"}]})
    message = str(info.value)
    assert "'broken-example'" in message
    assert "fastapps-auth-broken-example" in message


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.usefixtures("installed_plugins")
def test_cli_plugins_lists_the_plugin_and_reports_the_broken_one() -> None:
    result = run_cli("plugins")
    assert result.returncode == 0, result.stderr
    assert "ip-allowlist" in result.stdout
    assert "fastapps-auth-ip-allowlist 0.1.0" in result.stdout
    assert "networks" in result.stdout
    assert "missing_ip" in result.stdout
    assert "audit" in result.stdout  # the built-ins are still listed
    assert "broken-example" in result.stdout
    assert "BROKEN" in result.stdout
    assert "broken on purpose" in result.stdout
    assert "broken-example" in result.stderr  # the summary line
    assert "Traceback" not in result.stdout + result.stderr

    strict = run_cli("plugins", "--strict")
    assert strict.returncode == 1

    records = {r["name"]: r for r in map(json.loads, run_cli("plugins", "--json").stdout.splitlines())}
    assert records["broken-example"]["kind"] == "broken"
    assert records["broken-example"]["distribution"] == "fastapps-auth-broken-example"
    networks = next(o for o in records["ip-allowlist"]["options"] if o["name"] == "networks")
    assert (networks["type"], networks["default"]) == ("list[str]", "required")


@pytest.mark.usefixtures("installed_plugins")
def test_cli_check_with_the_plugin(tmp_path: Path) -> None:
    jwt = (
        '[[stages]]\nuse = "jwt"\nissuer_url = "https://issuer.example"\naudience = "api"\n'
        'hs_secret = "a-test-secret-of-at-least-32-bytes!!"\nalgorithms = ["HS256"]\n\n'
    )
    ok = toml(tmp_path, jwt + '[[stages]]\nuse = "ip-allowlist"\nnetworks = ["127.0.0.1"]\n')
    result = run_cli("check", str(ok))
    assert result.returncode == 0, result.stderr
    assert "ip-allowlist" in result.stdout

    broken = tmp_path / "broken.toml"
    broken.write_text('[[stages]]\nuse = "broken-example"\n')
    result = run_cli("check", str(broken))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "broken-example" in line
    assert str(broken) in line


@pytest.mark.usefixtures("installed_plugins")
@given(octets=st.tuples(*[st.integers(0, 255)] * 4))
def test_allowlist_matches_ipaddress_semantics(octets: tuple[int, int, int, int]) -> None:
    import ipaddress

    cls: Any = registry.load("ip-allowlist")
    stage = cls(networks=["10.0.0.0/8", "172.16.0.0/12"])
    ip = ".".join(map(str, octets))
    expected = ipaddress.ip_address(ip) in ipaddress.ip_network("10.0.0.0/8") or ipaddress.ip_address(
        ip
    ) in ipaddress.ip_network("172.16.0.0/12")
    assert stage.allows(ip) is expected
    assert stage.allows(f"::ffff:{ip}") is expected


@pytest.mark.usefixtures("installed_plugins")
async def test_the_writing_a_stage_example(dev_issuer: Any, mint: Any) -> None:
    """The test shown in docs/writing-a-stage.md, run as written."""
    from fastapps_auth_ip_allowlist import IPAllowlistStage

    from fastapps_auth import VerifierChain
    from fastapps_auth.testing.issuer import jwt_stage

    chain = VerifierChain(jwt_stage(dev_issuer), IPAllowlistStage(networks=["10.0.0.0/8"]))
    token = mint("alice")
    with request_context(RequestInfo(client_ip="10.1.2.3")):
        assert (await chain.evaluate(token)).allowed
    with request_context(RequestInfo(client_ip="192.0.2.1")):
        decision = await chain.evaluate(token)
    assert (decision.status, decision.stage, decision.reason) == (403, "ip-allowlist", "ip_not_allowed")
    await chain.aclose()
