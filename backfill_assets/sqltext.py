"""SQL text from a spec, read with DuckDB's own tokenizer: so a ``$`` or ``;`` inside a string literal or a
comment is never taken for a parameter or the end of a statement."""

from __future__ import annotations

import re

import duckdb

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD = (duckdb.token_type.identifier, duckdb.token_type.keyword)


def statement(sql: str, where: str = "SQL") -> str:
    """`sql` as one statement that can be wrapped in a subquery: trailing comments and a final ``;`` removed;
    a ValueError naming `where` when it holds several statements or none. DuckDB 1.5's tokenizer reports no
    comments, so a line comment may stay at the end; it then ends with a newline, so the subquery still closes."""
    tokens = duckdb.tokenize(sql)
    cut = len(sql)
    while tokens and (tokens[-1][1] == duckdb.token_type.comment or sql[tokens[-1][0]] == ";"):
        cut = tokens.pop()[0]
    if not tokens:
        raise ValueError(f"{where} is empty")
    if any(kind == duckdb.token_type.operator and sql[pos] == ";" for pos, kind in tokens):
        raise ValueError(f"{where} must be one SQL statement; it has several separated by ';'")
    text = sql[:cut].rstrip()
    return text + "\n" if "--" in text[tokens[-1][0] :] else text


def parameters(sql: str) -> set[str]:
    """The ``$name`` parameters `sql` uses, outside string literals and comments."""
    tokens = duckdb.tokenize(sql)
    found = set()
    for (pos, kind), (nxt, nxt_kind) in zip(tokens, tokens[1:], strict=False):
        if kind == duckdb.token_type.operator and sql[pos] == "$" and nxt == pos + 1 and nxt_kind in _WORD:
            name = _NAME.match(sql, nxt)
            if name:
                found.add(name.group())
    return found
