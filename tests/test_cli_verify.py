"""``fastapps-auth verify``: a request described on the command line, pasted schemes, shadow mode, unwrapped output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from fastapps_auth import RequestInfo, Stage, StageOptions, Verification, fingerprint
from fastapps_auth.cli import app
from fastapps_auth.cli.verify import split_scheme
from tests.support.stages import Fails, TokenIsSubject, registered

TOKEN = "user:alice-0123456789abcdefghijklmnopqrstuvwxyz"


class SeesRequestOptions(StageOptions):
    pass


class SeesRequest(Stage[SeesRequestOptions]):
    """Records the RequestInfo it was given (a class attribute: the CLI builds its own instance)."""

    plugin_name: ClassVar[str] = "sees-request"
    seen: ClassVar[list[RequestInfo | None]] = []

    async def __call__(self, v: Verification) -> None:
        SeesRequest.seen.append(v.request)


class AVeryLongExceptionClassNameThatWouldNotFitInAnEightyColumnTerminalError(ConnectionError):
    pass


class RaisesLongly(Stage[StageOptions]):
    plugin_name: ClassVar[str] = "raises-longly"

    async def __call__(self, v: Verification) -> None:
        raise AVeryLongExceptionClassNameThatWouldNotFitInAnEightyColumnTerminalError("down")


@pytest.fixture(autouse=True)
def plugins() -> Iterator[None]:
    SeesRequest.seen.clear()
    with registered(TokenIsSubject, SeesRequest, Fails, RaisesLongly):
        yield


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "auth.toml"
    path.write_text(
        '[[stages]]\nuse = "token-is-subject"\nscopes = ["read"]\n\n[[stages]]\nuse = "sees-request"\n\n'
        '[[stages]]\nuse = "scopes"\nunknown_tools = "deny"\n'
        '[stages.tools]\nsearch = ["read"]\ndelete = ["files:delete"]\n'
    )
    return path


def test_the_request_options_build_the_request_info(runner: CliRunner, config: Path) -> None:
    result = runner.invoke(
        app,
        [
            "verify",
            "-c",
            str(config),
            "--tool",
            "search",
            "--ip",
            "10.0.0.7",
            "--method",
            "post",
            "--url",
            "https://mcp.example.com/mcp?x=1#f",
            "-H",
            "DPoP: proof-1",
            "--header",
            "dpop:proof-2",
            TOKEN,
        ],
    )
    assert result.exit_code == 0, result.output
    (seen,) = SeesRequest.seen
    assert seen == RequestInfo(
        method="POST",
        path="/mcp",
        client_ip="10.0.0.7",
        mcp_method="tools/call",
        tool_name="search",
        url="https://mcp.example.com/mcp",
        auth_scheme="bearer",
        dpop_proofs=("proof-1", "proof-2"),
    )
    assert "request: method=POST url=https://mcp.example.com/mcp ip=10.0.0.7 mcp_method=tools/call tool=search" in (
        result.stdout
    )
    assert "proof-1" not in result.stdout  # a proof is a credential: only counted


def test_per_tool_decisions_can_be_explained(runner: CliRunner, config: Path) -> None:
    denied = runner.invoke(app, ["verify", "-c", str(config), "--json", "--tool", "delete", TOKEN])
    assert denied.exit_code == 1
    record = json.loads(denied.stdout)
    assert (record["reason"], record["scope"], record["status"]) == ("insufficient_tool_scope", "files:delete", 403)
    unknown = runner.invoke(app, ["verify", "-c", str(config), "--json", "--header", "Mcp-Name: rm", TOKEN])
    assert json.loads(unknown.stdout)["reason"] == "tool_not_allowed"
    assert SeesRequest.seen[-1] is not None and SeesRequest.seen[-1].tool_name == "rm"


def test_without_request_options_there_is_no_request(runner: CliRunner, config: Path) -> None:
    assert runner.invoke(app, ["verify", "-c", str(config), TOKEN]).exit_code == 0
    assert SeesRequest.seen == [None]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--ip", "10.0.0.300"], "--ip"),
        (["--header", "X-Forwarded-For: 1.2.3.4"], "not read by any stage (known: DPoP, Mcp-Method, Mcp-Name)"),
        (["--header", "DPoP"], "NAME:VALUE"),
        (["--url", "ftp://x/mcp"], "--url"),
        (["--tool", "a", "--header", "Mcp-Name: b"], "different tools"),
        (["--tool", "a", "--mcp-method", "tools/list"], "tools/call"),
    ],
)
def test_bad_request_options_are_one_line_usage_errors(
    runner: CliRunner, config: Path, argv: list[str], fragment: str
) -> None:
    result = runner.invoke(app, ["verify", "-c", str(config), *argv, TOKEN])
    assert result.exit_code == 2, result.output
    (line,) = [x for x in result.stderr.splitlines() if x.strip()]
    assert line.startswith("fastapps-auth: error: ") and fragment in line


@pytest.mark.parametrize(
    ("pasted", "scheme"),
    [
        (f"Bearer {TOKEN}", "bearer"),
        (f"bearer   {TOKEN} ", "bearer"),
        (f"Authorization: Bearer {TOKEN}", "bearer"),
        (f"authorization:DPoP {TOKEN}", "dpop"),
        (TOKEN, None),
        (f"Basic {TOKEN}", None),
    ],
)
def test_a_pasted_scheme_is_recognised(pasted: str, scheme: str | None) -> None:
    found, token = split_scheme(pasted)
    assert found == scheme
    assert token == (TOKEN if scheme else pasted)


def test_a_pasted_bearer_token_is_verified_with_a_note(runner: CliRunner, config: Path) -> None:
    result = runner.invoke(app, ["verify", "-c", str(config), "--json"], input=f"Bearer {TOKEN}\n{TOKEN}\n")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["allowed"] for line in result.stdout.splitlines()] == [True, True]
    assert "token #1: the Bearer scheme was removed" in result.stderr and "#2" not in result.stderr
    assert TOKEN not in result.output and fingerprint(TOKEN) in result.stdout


def test_a_pasted_dpop_token_is_presented_with_the_dpop_scheme(runner: CliRunner, config: Path) -> None:
    assert runner.invoke(app, ["verify", "-c", str(config), f"DPoP {TOKEN}"]).exit_code == 0
    (seen,) = SeesRequest.seen
    assert seen is not None and seen.auth_scheme == "dpop"


def test_verify_shows_shadowed_rejections(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "shadow.toml"
    path.write_text(
        '[[stages]]\nuse = "token-is-subject"\n\n'
        '[[stages]]\nuse = "fails"\nname = "new-ban-rule"\nerror = "rejected"\nenforce = false\n'
    )
    table = runner.invoke(app, ["verify", "-c", str(path), TOKEN])
    assert table.exit_code == 0, table.output
    assert "ALLOWED" in table.stdout and "shadow mode would have refused: new-ban-rule: user_banned" in table.stdout
    assert any(line.split()[:2] == ["new-ban-rule", "shadow-rejected"] for line in table.stdout.splitlines())
    as_json = json.loads(runner.invoke(app, ["verify", "-c", str(path), "--json", TOKEN]).stdout)
    assert as_json["shadowed"] == [["new-ban-rule", "user_banned"]]


def test_verify_does_not_split_class_names_when_piped(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "long.toml"
    path.write_text('[[stages]]\nuse = "token-is-subject"\n\n[[stages]]\nuse = "raises-longly"\non_error = "allow"\n')
    result = runner.invoke(app, ["verify", "-c", str(path), TOKEN])
    assert result.exit_code == 0, result.output
    name = AVeryLongExceptionClassNameThatWouldNotFitInAnEightyColumnTerminalError.__name__
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("raises-longly")]
    assert row.endswith(name)


def verify_rejected_head(result: Any) -> str:
    (head,) = [line for line in result.stdout.splitlines() if line.startswith("REJECTED")]
    return str(head)


def test_a_step_up_rejection_shows_what_to_re_authenticate_with(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "step.toml"
    path.write_text(
        '[[stages]]\nuse = "token-is-subject"\nscopes = ["pay"]\n\n'
        '[[stages]]\nuse = "scopes"\n'
        '[stages.tools]\ntransfer = { scopes = ["pay"], acr_values = ["mfa"], max_age = 300 }\n'
    )
    head = verify_rejected_head(runner.invoke(app, ["verify", "-c", str(path), "--tool", "transfer", TOKEN]))
    assert "(401 insufficient_user_authentication)" in head
    assert "scope=pay acr_values=mfa max_age=300" in head
