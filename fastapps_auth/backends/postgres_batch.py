"""The many-key form of a one-key PostgreSQL user query, so concurrent lookups share a round trip.

A query of the shape ``SELECT <list> FROM <table> WHERE <column> = $1`` is rewritten to::

    SELECT _fa_k._fa_ord, _fa_u.*
    FROM unnest($1::<type>[]) WITH ORDINALITY AS _fa_k(_fa_key, _fa_ord)
    CROSS JOIN LATERAL (SELECT <list> FROM <table> WHERE <column> = _fa_k._fa_key LIMIT 1) AS _fa_u

that is, the user's own query once per key (its first row, as ``fetchrow`` takes), all in one
statement. Each row carries the position of its key in the array, so rows are matched to
lookups by position, never by comparing values in Python: the database's own ``=`` (collation,
``char`` padding) decides, exactly as in the one-key query, and an aggregate or an expression
in ``<list>`` is evaluated per key, as there. ``LATERAL`` also keeps the plan the one-key query
has (an index probe per key) instead of a join the planner may turn into a scan.

The shape is checked on the text, conservatively: ``<list>`` is names, numbers, parentheses,
commas and operators (no string, no ``$`` parameter, no comment, no ``;``), and nothing follows
``$1``. Only there can ``$1`` be replaced without parsing SQL; any other query keeps one query
per lookup. The store also confirms the rewrite with the server before using it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: Name of the ordinal column the batched query adds in front of the user's columns.
ORDINAL = "_fa_ord"

_IDENT = r'(?:[A-Za-z_][A-Za-z0-9_]*+|"(?:[^"]|"")++")'
_NAME = rf"{_IDENT}(?:\s*+\.\s*+{_IDENT}){{0,2}}"
_HEAD = re.compile(r"\A\s*+SELECT\s+", re.IGNORECASE)
_TAIL = re.compile(
    rf"\s+FROM\s++(?P<table>{_NAME})\s++WHERE\s++(?P<key>{_NAME})\s*+=\s*+\$1\s*+;?\s*+\Z", re.IGNORECASE
)
#: What the select list may hold: names (quoted ones too), numbers, parentheses, commas and operators.
_LIST = re.compile(r'(?:[A-Za-z0-9_\s(),.*=<>!+%:|&^~]|-(?!-)|"(?:[^"]|"")++")++')

#: Parameter types whose values are plain strings: any lookup value encodes, none can fail a batch.
ARRAY_TYPES = {
    ("pg_catalog", "text"): "pg_catalog.text[]",
    ("pg_catalog", "varchar"): "pg_catalog.varchar[]",
    ("pg_catalog", "bpchar"): "pg_catalog.bpchar[]",
}


def batch_query(query: str, array_type: str = "pg_catalog.text[]") -> str | None:
    """The many-key form of ``query`` (``$1``: an array of keys), or ``None`` when its shape is not the plain one."""
    head, tail = _HEAD.match(query), _TAIL.search(query)
    if head is None or tail is None or tail.start() <= head.end():
        return None
    columns, table, key = query[head.end() : tail.start()], tail.group("table"), tail.group("key")
    if _LIST.fullmatch(columns) is None:
        return None
    # Text from the operator's own query, checked above; the lookup values stay one array parameter.
    one = f"SELECT {columns} FROM {table} WHERE {key} = _fa_k._fa_key LIMIT 1"  # noqa: S608
    keys = f"unnest($1::{array_type}) WITH ORDINALITY AS _fa_k(_fa_key, {ORDINAL})"
    return f"SELECT _fa_k.{ORDINAL}, _fa_u.* FROM {keys} CROSS JOIN LATERAL ({one}) AS _fa_u"  # noqa: S608


@dataclass(frozen=True, slots=True)
class BatchQuery:
    """A confirmed many-key query, and which lookup values it may carry."""

    sql: str
    #: The server takes any UTF-8 text (its encoding is UTF8 or SQL_ASCII), not only ASCII.
    unicode: bool

    def carries(self, key: str) -> bool:
        """True if ``key`` cannot make the batch fail (no NUL; ASCII, or valid UTF-8 for a UTF-8 server)."""
        if "\x00" in key:
            return False
        if key.isascii():
            return True
        if not self.unicode:
            return False
        try:
            key.encode()
        except UnicodeEncodeError:  # a lone surrogate
            return False
        return True


def _columns(stmt: Any) -> list[tuple[str, int]]:
    return [(a.name, a.type.oid) for a in stmt.get_attributes()]


async def confirm(con: Any, query: str) -> BatchQuery | None:
    """Prepare ``query`` and its many-key form on ``con``; the batch query if both agree, else ``None``.

    They agree when the one-key query's parameter is a string type and the many-key query
    returns the same columns (names and types) after the ordinal. A server error in the
    one-key query propagates (the lookup would fail the same way); one in the many-key query
    only means "do not batch".
    """
    if batch_query(query) is None:
        return None
    batch = await _compare(con, query)
    # asyncpg's prepare leaves the server's implicit transaction open, holding a lock on the table
    # (which would block a migration's ALTER TABLE for as long as the connection idles): end it.
    await con.fetchval("SELECT 1")
    return batch


async def _compare(con: Any, query: str) -> BatchQuery | None:
    import asyncpg

    single = await con.prepare(query)
    params = single.get_parameters()
    if len(params) != 1:
        return None
    array_type = ARRAY_TYPES.get((params[0].schema, params[0].name))
    sql = batch_query(query, array_type) if array_type else None
    if sql is None:
        return None
    try:
        many = await con.prepare(sql)
    except (asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError):
        raise  # the connection, not the rewrite, failed
    except asyncpg.PostgresError:
        return None
    one_columns = _columns(single)
    many_columns = _columns(many)
    if many_columns[:1] != [(ORDINAL, 20)] or many_columns[1:] != one_columns:  # 20: int8
        return None
    if any(name == ORDINAL for name, _ in one_columns):
        return None
    encoding = str(getattr(con.get_settings(), "server_encoding", "")).upper()
    return BatchQuery(sql, unicode=encoding in ("UTF8", "SQL_ASCII"))
