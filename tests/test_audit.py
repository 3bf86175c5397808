"""The audit observer: one structured event per decision, with trace and fingerprint, never the token."""

from __future__ import annotations

import io
import json
import logging
import random
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from mcp.server.auth.provider import AccessToken

from fastapps_auth import (
    ConfigError,
    Decision,
    Observer,
    Rejected,
    RequestInfo,
    Stage,
    StageOptions,
    Verification,
    VerifierChain,
    chain_from_config,
    fingerprint,
    registry,
    request_context,
)
from fastapps_auth.clock import ManualClock
from fastapps_auth.decision import StageTrace
from fastapps_auth.observers import render
from fastapps_auth.observers.audit import EVENT, AuditObserver
from fastapps_auth.observers.sinks import StreamSink

LOGGER = "fastapps_auth.audit"
TOKENS = {
    "tok-alice-0123456789abcdefghijklmnop": "alice",
    "tok-bob-0123456789abcdefghijklmnopqrst": "bob",
    "tok-mallory-0123456789abcdefghijklmnop": "mallory",
}
ALICE, BOB, MALLORY = TOKENS


class TableAuth(Stage[StageOptions]):
    """Authenticates the tokens of a table (a stand-in for the jwt stage)."""

    plugin_name: ClassVar[str] = "table-auth"
    authenticates: ClassVar[bool] = True

    def __init__(self, table: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.table = table if table is not None else TOKENS

    async def __call__(self, v: Verification) -> None:
        subject = self.table.get(v.token)
        if subject is None:
            raise Rejected("bad_signature", "the token signature is invalid")
        v.cache_hit = True
        v.access_token = AccessToken(
            token=v.token,
            client_id=f"client-{subject}",
            scopes=["read", "write"],
            expires_at=int(v.now) + 3600,
            subject=subject,
            claims={"sub": subject, "tenant_id": "acme", "email": f"{subject}@example.com"},
        )


class Ban(Stage[StageOptions]):
    """Rejects mallory (403 user_banned)."""

    plugin_name: ClassVar[str] = "ban"

    async def __call__(self, v: Verification) -> None:
        if v.access_token is not None and v.access_token.subject == "mallory":
            raise Rejected("user_banned", "the user is banned", status=403, error="insufficient_scope")


class Down(Stage[StageOptions]):
    """A stage whose service is down: every call fails transiently."""

    plugin_name: ClassVar[str] = "down"

    async def __call__(self, v: Verification) -> None:
        raise ConnectionError(f"could not reach the database while checking {v.token}")


class Exploding(Observer[Any]):
    plugin_name: ClassVar[str] = "exploding"

    def __call__(self, decision: Any) -> None:
        raise RuntimeError("observer bug")


def events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == LOGGER]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


async def test_allowed_decision_is_one_json_event_with_fingerprint_trace_and_request(
    logs: pytest.LogCaptureFixture, clock: ManualClock
) -> None:
    chain = VerifierChain(TableAuth(), Ban(), observers=[AuditObserver()], clock=clock)
    info = RequestInfo(method="POST", path="/mcp", client_ip="203.0.113.9", mcp_method="tools/call", tool_name="search")
    with request_context(info):
        decision = await chain.evaluate(ALICE)
    assert decision.allowed
    [record] = [r for r in logs.records if r.name == LOGGER]
    assert record.levelno == logging.INFO
    event = json.loads(record.getMessage())
    assert event["event"] == EVENT
    assert event["outcome"] == "allowed"
    assert event["status"] == 200
    assert event["subject"] == "alice"
    assert event["client_id"] == "client-alice"
    assert event["scopes"] == ["read", "write"]
    assert event["token_fingerprint"] == fingerprint(ALICE)
    assert event["method"] == "POST"
    assert event["path"] == "/mcp"
    assert event["client_ip"] == "203.0.113.9"
    assert event["tool"] == "search"
    assert event["mcp_method"] == "tools/call"
    assert event["timestamp"].startswith("2027-01-15T08:00:00")  # the injected clock's wall time
    assert [t["stage"] for t in event["trace"]] == ["table-auth", "ban"]
    assert [t["outcome"] for t in event["trace"]] == ["passed", "passed"]
    assert event["trace"][0]["cache_hit"] is True
    assert event["duration_ms"] >= 0
    assert "claims" not in event  # no allow-list, no claims
    assert ALICE not in record.getMessage()


async def test_rejection_names_the_deciding_stage_reason_and_status(logs: pytest.LogCaptureFixture) -> None:
    chain = VerifierChain(TableAuth(), Ban(), observers=[AuditObserver()])
    decision = await chain.evaluate(MALLORY)
    assert not decision.allowed
    [record] = [r for r in logs.records if r.name == LOGGER]
    assert record.levelno == logging.WARNING
    event = json.loads(record.getMessage())
    assert event["outcome"] == "rejected"
    assert (event["stage"], event["reason"], event["status"], event["error"]) == (
        "ban",
        "user_banned",
        403,
        "insufficient_scope",
    )
    assert [t["outcome"] for t in event["trace"]] == ["passed", "rejected"]
    assert event["token_fingerprint"] == fingerprint(MALLORY)
    # who was rejected: the authenticated principal, although the decision grants nothing
    assert (event["subject"], event["client_id"]) == ("mallory", "client-mallory")


async def test_fail_open_and_unavailable_are_logged_as_such(logs: pytest.LogCaptureFixture) -> None:
    audit = AuditObserver(sample_allowed=0.0)  # sampling never hides a fail-open
    opened = VerifierChain(TableAuth(), Down(on_error="allow"), observers=[audit])
    denied = VerifierChain(TableAuth(), Down(retry_after=7), observers=[audit])
    assert (await opened.evaluate(BOB)).allowed
    assert not (await denied.evaluate(BOB)).allowed
    first, second = events(logs)
    assert first["outcome"] == "failed-open"
    assert first["failed_open"] == ["down"]
    assert first["trace"][1] == {
        "stage": "down",
        "outcome": "error-allowed",
        "ms": first["trace"][1]["ms"],
        "cache_hit": None,
        "reason": "unavailable",
        "error": "ConnectionError",
    }
    assert second["outcome"] == "unavailable"
    assert (second["status"], second["stage"], second["retry_after"]) == (503, "down", 7.0)
    for record in logs.records:  # the chain's own warning strips the token from the exception message
        assert BOB not in record.getMessage()


async def test_each_decision_is_logged_exactly_once_even_when_another_observer_fails(
    logs: pytest.LogCaptureFixture,
) -> None:
    chain = VerifierChain(TableAuth(), observers=[Exploding(), AuditObserver(), Exploding()])
    tokens = [ALICE, "unknown-token-xxxxxxxxxxxxxxxxxxxx", BOB, MALLORY]
    decisions = [await chain.evaluate(t) for t in tokens]
    assert [d.allowed for d in decisions] == [True, False, True, True]
    assert [e["token_fingerprint"] for e in events(logs)] == [fingerprint(t) for t in tokens]
    assert sum("observer 'exploding' failed" in r.getMessage() for r in logs.records) == 8


async def test_sampling_drops_only_allowed_decisions_at_the_configured_rate(logs: pytest.LogCaptureFixture) -> None:
    audit = AuditObserver(sample_allowed=0.25, rng=random.Random(42))
    chain = VerifierChain(TableAuth(), Ban(), observers=[audit])
    for _ in range(200):
        await chain.evaluate(ALICE)
        await chain.evaluate(MALLORY)
    outcomes = [e["outcome"] for e in events(logs)]
    logged_allowed = outcomes.count("allowed")
    assert outcomes.count("rejected") == 200  # never sampled
    assert 20 < logged_allowed < 80  # 50 expected; seeded, so this is deterministic
    assert audit.stats() == {"logged": 200.0 + logged_allowed, "sampled_out": 200.0 - logged_allowed}


@pytest.mark.parametrize("rate", [0.01, 0.25, 0.9])
def test_sampling_keeps_the_configured_fraction_of_allowed_decisions(rate: float) -> None:
    """One ``random() < rate`` per allowed decision: the kept share converges to the rate."""
    log = logging.getLogger("fastapps_auth.audit.sampling-test")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.handlers[:] = [logging.NullHandler()]
    audit = AuditObserver(sample_allowed=rate, rng=random.Random(7), logger=log.name)
    allowed = Decision(True, None)
    n = 50_000
    for _ in range(n):
        audit(allowed)
    kept = audit.stats()["logged"] / n
    sd = (rate * (1 - rate) / n) ** 0.5
    assert abs(kept - rate) < 5 * sd
    assert audit.stats()["logged"] + audit.stats()["sampled_out"] == n


async def test_sampling_zero_logs_no_allowed_decision(logs: pytest.LogCaptureFixture) -> None:
    chain = VerifierChain(TableAuth(), Ban(), observers=[AuditObserver(sample_allowed=0)])
    for t in (ALICE, BOB, MALLORY):
        await chain.evaluate(t)
    assert [(e["outcome"], e["reason"]) for e in events(logs)] == [("rejected", "user_banned")]


async def test_claims_are_an_allow_list(logs: pytest.LogCaptureFixture) -> None:
    chain = VerifierChain(TableAuth(), observers=[AuditObserver(claims=["tenant_id", "absent"])])
    await chain.evaluate(ALICE)
    [event] = events(logs)
    assert event["claims"] == {"tenant_id": "acme"}
    assert "alice@example.com" not in json.dumps(event)


async def test_trace_can_be_left_out(logs: pytest.LogCaptureFixture) -> None:
    chain = VerifierChain(TableAuth(), observers=[AuditObserver(include_trace=False)])
    await chain.evaluate(ALICE)
    [event] = events(logs)
    assert "trace" not in event
    assert event["subject"] == "alice"


async def test_logger_name_and_logfmt_renderer(logs: pytest.LogCaptureFixture) -> None:
    chain = VerifierChain(TableAuth(), observers=[AuditObserver(logger="acme.audit", renderer="logfmt")])
    await chain.evaluate(ALICE)
    [record] = [r for r in logs.records if r.name == "acme.audit"]
    line = record.getMessage()
    assert line.startswith(f"event='{EVENT}' timestamp=")
    assert " outcome='allowed' " in line
    assert f"token_fingerprint='{fingerprint(ALICE)}'" in line
    assert ALICE not in line


async def test_console_renderer(logs: pytest.LogCaptureFixture) -> None:
    chain = VerifierChain(TableAuth(), Ban(), observers=[AuditObserver(renderer="console")])
    await chain.evaluate(MALLORY)
    [record] = [r for r in logs.records if r.name == LOGGER]
    assert EVENT in record.getMessage()
    assert "user_banned" in record.getMessage()
    assert "\x1b[" not in record.getMessage()  # no colour codes in a log file


async def test_structlog_renderer_hands_the_event_to_the_applications_structlog() -> None:
    chain = VerifierChain(TableAuth(), Ban(), observers=[AuditObserver(renderer="structlog")])
    with structlog.testing.capture_logs() as captured:
        await chain.evaluate(ALICE)
        await chain.evaluate(MALLORY)
    assert [(e["event"], e["log_level"], e["outcome"]) for e in captured] == [
        (EVENT, "info", "allowed"),
        (EVENT, "warning", "rejected"),
    ]
    assert captured[1]["reason"] == "user_banned"


async def test_disabled_logger_costs_nothing_and_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    audit = AuditObserver()
    chain = VerifierChain(TableAuth(), Ban(), observers=[audit])
    await chain.evaluate(ALICE)  # INFO: below the logger's level
    await chain.evaluate(MALLORY)
    assert [e["outcome"] for e in events(caplog)] == ["rejected"]
    assert audit.logged == 1


async def test_unserializable_claims_do_not_break_the_event(logs: pytest.LogCaptureFixture) -> None:
    class OddClaims(TableAuth):
        async def __call__(self, v: Verification) -> None:
            await super().__call__(v)
            assert v.access_token is not None
            v.access_token = v.access_token.model_copy(update={"claims": {"when": object(), "n": 1}})

    chain = VerifierChain(OddClaims(), observers=[AuditObserver(claims=["when", "n"])])
    assert (await chain.evaluate(ALICE)).allowed
    [event] = events(logs)
    assert event["claims"]["n"] == 1
    assert event["claims"]["when"].startswith("<object object")


@pytest.fixture
def table_auth_plugin() -> Iterator[str]:
    registry.register("audit-test-auth", TableAuth)
    yield "audit-test-auth"
    registry.unregister("audit-test-auth")


def test_built_from_config_by_name(table_auth_plugin: str) -> None:
    chain = chain_from_config(
        {"stages": [{"use": table_auth_plugin}, {"use": "audit", "sample_allowed": 0.5, "claims": ["tenant_id"]}]}
    )
    [audit] = chain.observers
    assert isinstance(audit, AuditObserver)
    assert audit.options.sample_allowed == 0.5


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"sample_allowed": 1.5}, "sample_allowed"),
        ({"renderer": "xml"}, "renderer"),
        ({"logger": ""}, "logger"),
        ({"claims": [""]}, "claims"),
        ({"sample": 0.5}, "sample"),
        ({"sink": "file"}, "path"),
        ({"sink": "stdout", "path": "audit.log"}, "path"),
        ({"sink": "stderr", "renderer": "console"}, "sink"),
        ({"sink": "file", "path": "a.log", "flush_interval": -1}, "flush_interval"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, Any], key: str, table_auth_plugin: str) -> None:
    with pytest.raises(ConfigError) as info:
        chain_from_config({"stages": [{"use": table_auth_plugin}, {"use": "audit", **options}]})
    assert info.value.location.key == key
    assert "audit" in str(info.value)


async def test_timestamp_is_the_chains_wall_time_in_utc(logs: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(1_800_000_000.25)
    chain = VerifierChain(TableAuth(), observers=[AuditObserver()], clock=clock)
    await chain.evaluate(ALICE)
    clock.advance(1.5)
    await chain.evaluate(ALICE)
    clock.advance(0.000001)
    await chain.evaluate(ALICE)
    assert [e["timestamp"] for e in events(logs)] == [
        "2027-01-15T08:00:00.250000+00:00",
        "2027-01-15T08:00:01.750000+00:00",
        "2027-01-15T08:00:01.750001+00:00",
    ]


@given(epoch=st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False))
def test_timestamp_formatting_matches_datetime(epoch: float) -> None:
    audit = AuditObserver()
    expected = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")
    assert audit.event(Decision(False, None, started_at=epoch))["timestamp"] == expected
    assert audit.event(Decision(False, None, started_at=epoch))["timestamp"] == expected  # cached prefix path


def test_each_record_is_made_by_logging_with_its_own_fields(logs: pytest.LogCaptureFixture) -> None:
    """No record is cloned: a record-factory hook (OpenTelemetry's trace ids) and the thread are each record's own."""
    import asyncio
    import contextvars
    import threading

    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
    original = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = original(*args, **kwargs)
        record.request_id = request_id.get()
        return record

    chain = VerifierChain(TableAuth(), observers=[AuditObserver()])

    async def one(rid: str) -> None:
        request_id.set(rid)
        await chain.evaluate(ALICE)

    async def requests() -> None:
        await asyncio.gather(one("r1"), one("r2"))
        await one("r3")

    logging.setLogRecordFactory(factory)
    try:
        asyncio.run(requests())
        worker = threading.Thread(target=lambda: asyncio.run(one("r4")))
        worker.start()
        worker.join()
    finally:
        logging.setLogRecordFactory(original)
    records = [r for r in logs.records if r.name == LOGGER]
    assert [r.__dict__["request_id"] for r in records] == ["r1", "r2", "r3", "r4"]
    assert [r.thread for r in records] == [threading.get_ident()] * 3 + [worker.ident]
    assert records[0].created <= records[2].created <= records[3].created


@pytest.mark.skipif(sys.version_info < (3, 12), reason="LogRecord.taskName is new in Python 3.12")
def test_each_record_carries_its_own_task_name(logs: pytest.LogCaptureFixture) -> None:
    import asyncio

    chain = VerifierChain(TableAuth(), observers=[AuditObserver()])

    async def requests() -> None:
        await asyncio.create_task(chain.evaluate(ALICE), name="first")
        await asyncio.create_task(chain.evaluate(BOB), name="second")

    asyncio.run(requests())
    assert [r.__dict__["taskName"] for r in logs.records if r.name == LOGGER] == ["first", "second"]


def test_shadowed_rejections_are_in_the_event_and_never_sampled_out(logs: pytest.LogCaptureFixture) -> None:
    audit = AuditObserver(sample_allowed=0.0)
    shadowed = Decision(
        True,
        None,
        trace=(
            StageTrace("jwt", "passed", 0.001),
            StageTrace("rate-limit", "shadow-rejected", 0.002, reason="rate_limited"),
        ),
        shadowed=(("rate-limit", "rate_limited"),),
        fingerprint="0123456789ab",
    )
    audit(shadowed)
    audit(Decision(True, None))  # a clean allow: sampled out at 0.0
    [record] = [r for r in logs.records if r.name == LOGGER]
    assert record.levelno == logging.WARNING
    event = json.loads(record.getMessage())
    assert event["outcome"] == "allowed"
    assert event["shadowed"] == [{"stage": "rate-limit", "reason": "rate_limited"}]
    assert [t["outcome"] for t in event["trace"]] == ["passed", "shadow-rejected"]
    assert audit.stats() == {"logged": 1.0, "sampled_out": 1.0}


def test_the_old_import_paths_keep_working() -> None:
    from fastapps_auth.backends import audit_sink
    from fastapps_auth.observers import audit, sinks
    from fastapps_auth.stages import audit as old

    assert old.AuditObserver is audit.AuditObserver
    assert old.EVENT == EVENT
    assert audit_sink.StreamSink is sinks.StreamSink
    assert registry.load("audit") is AuditObserver


# -- the stdout / stderr / file sinks ---------------------------------------------------------------


def _lines(path: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_file_sink_buffers_lines_and_writes_them_all_on_close(tmp_path: Any) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditObserver(sink="file", path=str(path), flush_interval=30)
    chain = VerifierChain(TableAuth(), Ban(), observers=[audit])
    for t in (ALICE, BOB, MALLORY, "unknown-token-xxxxxxxxxxxxxxxxxxxx"):
        await chain.evaluate(t)
    assert not path.exists()  # opened lazily, on the first write; nothing written yet
    assert audit.stats()["sink_buffered"] == 4
    await chain.aclose()
    events = _lines(path)
    assert [(e["subject"], e["outcome"]) for e in events] == [
        ("alice", "allowed"),
        ("bob", "allowed"),
        ("mallory", "rejected"),
        (None, "rejected"),
    ]
    assert all(e["event"] == EVENT for e in events)
    assert ALICE not in path.read_text()
    assert audit.stats()["sink_written"] == 4


async def test_file_sink_schedules_one_flush_on_the_event_loop(tmp_path: Any) -> None:
    import asyncio

    path = tmp_path / "audit.jsonl"
    sink = StreamSink("file", path=str(path), flush_interval=0.5)
    loop = asyncio.get_running_loop()
    sink.write(b"one\n")
    timer = sink._timer
    assert timer is not None
    assert 0.4 < timer.when() - loop.time() <= 0.5
    sink.write(b"two\n")
    assert sink._timer is timer  # one timer per batch, not per line
    timer._run()  # what the loop does when the timer is due
    assert path.read_text() == "one\ntwo\n"
    sink.close()


async def test_file_sink_writes_when_the_buffer_is_full_or_the_interval_is_zero(tmp_path: Any) -> None:
    full = StreamSink("file", path=str(tmp_path / "full.jsonl"), flush_interval=60, max_buffer=3)
    for i in range(4):
        full.write(b"%d\n" % i)
    assert (tmp_path / "full.jsonl").read_text() == "0\n1\n2\n"
    full.close()
    assert (tmp_path / "full.jsonl").read_text() == "0\n1\n2\n3\n"
    now = StreamSink("file", path=str(tmp_path / "now.jsonl"), flush_interval=0)
    now.write(b"a\n")
    assert (tmp_path / "now.jsonl").read_text() == "a\n"
    now.close()


def test_without_an_event_loop_lines_are_written_at_once(tmp_path: Any) -> None:
    sink = StreamSink("file", path=str(tmp_path / "sync.jsonl"), flush_interval=5)
    sink.write(b"x\n")
    assert (tmp_path / "sync.jsonl").read_text() == "x\n"
    sink.close()


async def test_stdout_sink(capsys: pytest.CaptureFixture[str]) -> None:
    audit = AuditObserver(sink="stdout")
    chain = VerifierChain(TableAuth(), observers=[audit])
    await chain.evaluate(ALICE)
    audit.flush()
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["subject"] == "alice"
    await chain.aclose()


async def test_stdout_sink_keeps_the_order_of_what_was_printed_before(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="utf-8"))  # buffers text until flushed
    audit = AuditObserver(sink="stdout", flush_interval=60)
    chain = VerifierChain(TableAuth(), observers=[audit])
    print("before")
    await chain.evaluate(ALICE)
    audit.flush()
    first, line = raw.getvalue().decode().splitlines()
    assert first == "before"
    assert json.loads(line)["subject"] == "alice"
    await chain.aclose()


async def test_stdout_sink_writes_text_to_a_stream_without_a_binary_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    audit = AuditObserver(sink="stdout", flush_interval=60)
    chain = VerifierChain(TableAuth(), observers=[audit])
    await chain.evaluate(ALICE)
    await chain.evaluate(BOB)
    await chain.aclose()
    assert [json.loads(line)["subject"] for line in out.getvalue().splitlines()] == ["alice", "bob"]


async def test_file_lines_are_utf8_json(tmp_path: Any) -> None:
    path = tmp_path / "audit.jsonl"
    subject = 'zoë ☃ "quoted"\nnext'
    audit = AuditObserver(sink="file", path=str(path))
    chain = VerifierChain(TableAuth({ALICE: subject}), observers=[audit])
    await chain.evaluate(ALICE)
    await chain.aclose()
    [event] = _lines(path)  # one line: the newline in the subject is escaped
    assert event["subject"] == subject
    assert "zoë ☃".encode() in path.read_bytes()


async def test_file_sink_with_the_logfmt_renderer(tmp_path: Any) -> None:
    path = tmp_path / "audit.log"
    audit = AuditObserver(sink="file", path=str(path), renderer="logfmt")
    chain = VerifierChain(TableAuth(), Ban(), observers=[audit])
    await chain.evaluate(ALICE)
    await chain.evaluate(MALLORY)
    await chain.aclose()
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("event='auth.decision' timestamp=") for line in lines)
    assert "outcome='allowed'" in lines[0]
    assert "subject='alice'" in lines[0]
    assert "outcome='rejected'" in lines[1]


def test_the_stdlib_fallback_renders_the_same_json_as_orjson() -> None:
    event = {"event": EVENT, "n": 1.5, "none": None, "text": 'é\n"', "items": [1, "a"], "odd": object()}
    assert json.loads(render.ascii_json(event)) == json.loads(render.json_text(event))
    assert render.ascii_json(event).isascii()
    assert render.json_line(event) == render.json_text(event).encode() + b"\n"


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "renders_as"),
    [
        ("\ud800x", "\ud800x"),  # a lone surrogate: not UTF-8, orjson refuses it
        (2**70, 2**70),  # beyond 64 bits
        (_nested(300), _nested(300)),  # deeper than orjson's 254 levels
        (_nested(50_000), None),  # too deep for the stdlib too: the claims give way, not the event
    ],
    ids=["lone-surrogate", "big-int", "deep", "too-deep"],
)
def test_what_orjson_refuses_is_still_rendered(value: Any, renders_as: Any) -> None:
    event = {"event": EVENT, "tool": "search", "claims": {"x": value}}
    for rendered in (render.json_text(event), render.json_line(event).decode()):
        parsed = json.loads(rendered)
        assert parsed["event"] == EVENT
        assert parsed["tool"] == "search"
        assert parsed["claims"] == ({"x": renders_as} if renders_as is not None else "<not renderable>")
        assert rendered.isascii()  # escaped, so any handler or stream can write it


async def test_a_client_cannot_keep_its_requests_out_of_the_audit_log(tmp_path: Any) -> None:
    """A JSON-RPC body is read before any token is checked; what it names reaches the event, whatever it is."""
    import httpx
    from starlette.responses import JSONResponse

    from fastapps_auth.integrations.starlette import ChainAuthMiddleware

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        await JSONResponse({"ok": True})(scope, receive, send)

    path = tmp_path / "audit.jsonl"
    chain = VerifierChain(TableAuth(), observers=[AuditObserver(sink="file", path=str(path), flush_interval=60)])
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\ud800evil","arguments":{}}}'
    transport = httpx.ASGITransport(app=ChainAuthMiddleware(endpoint, chain))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        for token in ("not-a-known-token-xxxxxxxxxxxxxxxxxx", ALICE):
            response = await client.post(
                "/mcp", content=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            )
            assert response.status_code == (401 if token != ALICE else 200)
    await chain.aclose()
    events = _lines(path)
    assert [(e["outcome"], e["tool"]) for e in events] == [("rejected", "\ud800evil"), ("allowed", "\ud800evil")]


async def test_a_failing_write_is_counted_and_never_reaches_the_decision(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditObserver(sink="file", path=str(tmp_path), flush_interval=0)  # a directory: open() fails
    chain = VerifierChain(TableAuth(), observers=[audit])
    decisions = [await chain.evaluate(ALICE) for _ in range(3)]
    assert all(d.allowed for d in decisions)
    assert audit.stats()["sink_dropped"] == 3
    warnings = [r for r in caplog.records if r.name == "fastapps_auth.audit.sink"]
    assert len(warnings) == 1  # at most one warning a minute
    assert "IsADirectoryError" in warnings[0].getMessage()
