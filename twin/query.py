"""Twin queries (ext): a small WHERE language over the in-memory twins, ordering,
cursor paging and GROUP BY.

The grammar (keywords in any case)::

    expr      := term ("OR" term)*
    term      := factor ("AND" factor)*
    factor    := "NOT" factor | "(" expr ")" | predicate
    predicate := path op literal
               | path ["NOT"] "IN" "(" literal ("," literal)* ")"
               | path ["NOT"] "LIKE" string
               | path "IS" ["NOT"] ("DEFINED" | "NULL")
    op        := "=" | "!=" | "<>" | "<" | "<=" | ">" | ">="
    literal   := number | 'string' | TRUE | FALSE
    path      := id | namespace | name | model | node | state | last_online
               | version | has_delta | reported.P | desired.P | ack.P.status

A property name ``P`` with characters outside ``[A-Za-z0-9_-]`` is written in
double quotes: ``reported."a,b"``. Comparisons are typed: a number literal
matches numeric values only, a string literal strings only, ``TRUE``/``FALSE``
booleans only; a comparison on an undefined path or across types is false,
and ``NOT`` of it is true. ``LIKE`` patterns use ``%`` for any run of
characters and are case-sensitive; ``_`` has no special meaning.

A query compiles once into closures over :class:`~twin.document.DeviceTwin`
and runs over every device in memory, which is what makes a query over ten
thousand twins take milliseconds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .document import MAX_EVENT_ID, DeviceTwin, dumps, shown

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "Query",
    "QueryError",
    "compile_where",
    "parse_path",
    "parse_query",
]

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000

Scalar = str | int | float | bool
Accessor = Callable[[DeviceTwin], Scalar | None]
Predicate = Callable[[DeviceTwin], bool]

_KEYWORDS: Final = frozenset(
    {"AND", "OR", "NOT", "IN", "LIKE", "IS", "DEFINED", "NULL", "TRUE", "FALSE", "ASC", "DESC"}
)
_OPS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
# Type categories: a comparison only ever holds between values of one category.
_CAT: Final[dict[type, int]] = {bool: 0, int: 1, float: 1, str: 2}
_REQUEST_KEYS: Final = frozenset(
    {"event_id", "reply_to", "where", "select", "group_by", "order_by", "limit", "cursor"}
)
_NUMBER_RE: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_WORD_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEGMENT_RE: Final = re.compile(r"[A-Za-z0-9_\-]+")


class QueryError(Exception):
    """A query that cannot run: ``reason``, ``position`` (0-based) for a parse error,
    and ``code``: 400 for a bad query, 413 for an answer over the size limit."""

    def __init__(self, reason: str, position: int | None = None, code: int = 400) -> None:
        self.reason = reason
        self.position = position
        self.code = code
        super().__init__(reason if position is None else f"{reason} (at {position})")


# --------------------------------------------------------------------------- tokens
@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # path, kw, num, str, op, "(", ")", ",", end
    value: Any
    pos: int
    text: str


def _tokenize(src: str, field: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c.isspace():
            i += 1
            continue
        start = i
        if c in "(),":
            toks.append(_Tok(c, c, i, c))
            i += 1
        elif c in "=<>!":
            two = src[i : i + 2]
            if two in ("!=", "<>", "<=", ">="):
                toks.append(_Tok("op", two, i, two))
                i += 2
            elif c == "!":
                raise QueryError(f"{field}: '!' must be followed by '='", i)
            else:
                toks.append(_Tok("op", c, i, c))
                i += 1
        elif c == "'":
            value, i = _quoted(src, i, "'", field)
            toks.append(_Tok("str", value, start, src[start:i]))
        elif c.isdigit() or (
            c in "+-." and i + 1 < n and (src[i + 1].isdigit() or src[i + 1] == ".")
        ):
            m = _NUMBER_RE.match(src, i)
            if m is None:
                raise QueryError(f"{field}: malformed number", i)
            text = m.group()
            i = m.end()
            if i < n and (src[i].isalnum() or src[i] == "_"):
                raise QueryError(f"{field}: malformed number {src[start : i + 1]!r}", start)
            num: int | float = int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else float(text)
            toks.append(_Tok("num", num, start, text))
        elif c.isalpha() or c == "_":
            m = _WORD_RE.match(src, i)
            assert m is not None
            segments = [m.group()]
            i = m.end()
            while i < n and src[i] == ".":
                i += 1
                if i < n and src[i] == '"':
                    seg, i = _quoted(src, i, '"', field)
                    if not seg:
                        raise QueryError(f"{field}: empty property name", i - 2)
                    segments.append(seg)
                    continue
                m2 = _SEGMENT_RE.match(src, i)
                if m2 is None:
                    raise QueryError(
                        f"{field}: expected a name after '.' (quote names with other "
                        'characters: reported."a,b")',
                        i,
                    )
                segments.append(m2.group())
                i = m2.end()
            text = src[start:i]
            if len(segments) == 1 and segments[0].upper() in _KEYWORDS:
                toks.append(_Tok("kw", segments[0].upper(), start, text))
            else:
                toks.append(_Tok("path", tuple(segments), start, text))
        else:
            raise QueryError(f"{field}: unexpected character {c!r}", i)
    toks.append(_Tok("end", None, n, ""))
    return toks


def _quoted(src: str, i: int, quote: str, field: str) -> tuple[str, int]:
    """Read a quoted run starting at ``src[i] == quote``; a doubled quote is one quote."""
    start = i
    i += 1
    out: list[str] = []
    while True:
        j = src.find(quote, i)
        if j < 0:
            raise QueryError(f"{field}: unterminated {quote}-quoted text", start)
        out.append(src[i:j])
        if src.startswith(quote * 2, j):
            out.append(quote)
            i = j + 2
            continue
        return "".join(out), j + 1


# --------------------------------------------------------------------------- paths
def _value(prop: str, side: str) -> Accessor:
    """The reported (``side="actual"``) or desired (``"expected"``) value of ``prop``."""

    def get(d: DeviceTwin) -> Scalar | None:
        t = d.twins.get(prop)
        if t is None:
            return None
        s = getattr(t, side)
        if s is None:
            return None
        v = s.value
        return s.text if type(v) is bytes else v  # type: ignore[no-any-return]

    return get


def _ack_status(prop: str) -> Accessor:
    def get(d: DeviceTwin) -> Scalar | None:
        t = d.twins.get(prop)
        if t is None or t.ack is None:
            return None
        return t.ack.status

    return get


_SIMPLE: Final[dict[str, Accessor]] = {
    "id": lambda d: d.id,
    "namespace": lambda d: d.namespace,
    "name": lambda d: d.name,
    "model": lambda d: d.model,
    "node": lambda d: d.node,
    "state": lambda d: d.state,
    "last_online": lambda d: d.last_online or None,
    "version": lambda d: d.version,
    "has_delta": lambda d: d.has_delta,
}


def _accessor(segments: tuple[str, ...], pos: int, field: str) -> Accessor:
    head = segments[0]
    if len(segments) == 1 and head in _SIMPLE:
        return _SIMPLE[head]
    if head in ("reported", "desired") and len(segments) == 2:
        return _value(segments[1], "actual" if head == "reported" else "expected")
    if head == "ack" and len(segments) == 3 and segments[2] == "status":
        return _ack_status(segments[1])
    raise QueryError(
        f"{field}: unknown path {shown('.'.join(segments))} (paths: {', '.join(_SIMPLE)}, "
        "reported.<prop>, desired.<prop>, ack.<prop>.status)",
        pos,
    )


def parse_path(text: str, field: str) -> Accessor:
    """Compile one path (a ``select``, ``order_by`` or ``group_by`` entry)."""
    toks = _tokenize(text, field)
    if toks[0].kind != "path" or toks[1].kind != "end":
        raise QueryError(f"{field}: expected one path, got {text!r}", toks[0].pos)
    return _accessor(toks[0].value, toks[0].pos, field)


# --------------------------------------------------------------------------- WHERE
class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks = _tokenize(src, "where")
        self.i = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def is_kw(self, word: str) -> bool:
        tok = self.tok
        return tok.kind == "kw" and tok.value == word

    def fail(self, expected: str) -> QueryError:
        tok = self.tok
        got = "the end of the query" if tok.kind == "end" else repr(tok.text)
        return QueryError(f"where: expected {expected}, got {got}", tok.pos)

    def parse(self) -> Predicate:
        if self.tok.kind == "end":
            return _always
        pred = self.expr()
        if self.tok.kind != "end":
            raise self.fail("AND, OR or the end of the query")
        return pred

    def expr(self) -> Predicate:
        parts = [self.term()]
        while self.is_kw("OR"):
            self.take()
            parts.append(self.term())
        return _join(parts, conjunction=False)

    def term(self) -> Predicate:
        parts = [self.factor()]
        while self.is_kw("AND"):
            self.take()
            parts.append(self.factor())
        return _join(parts, conjunction=True)

    def factor(self) -> Predicate:
        if self.is_kw("NOT"):
            self.take()
            inner = self.factor()
            return lambda d: not inner(d)
        if self.tok.kind == "(":
            self.take()
            inner = self.expr()
            if self.tok.kind != ")":
                raise self.fail("')'")
            self.take()
            return inner
        return self.predicate()

    def literal(self) -> Scalar:
        tok = self.tok
        if tok.kind in ("num", "str"):
            self.take()
            value: Scalar = tok.value
            return value
        if tok.kind == "kw" and tok.value in ("TRUE", "FALSE"):
            self.take()
            return bool(tok.value == "TRUE")
        if tok.kind == "kw" and tok.value == "NULL":
            raise QueryError("where: compare with NULL using IS NULL or IS DEFINED", tok.pos)
        raise self.fail("a value (a number, a 'string', TRUE or FALSE)")

    def predicate(self) -> Predicate:
        tok = self.tok
        if tok.kind != "path":
            raise self.fail("a path, NOT or '('")
        self.take()
        acc = _accessor(tok.value, tok.pos, "where")
        nxt = self.tok
        if nxt.kind == "op":
            self.take()
            return _compare(acc, _OPS[nxt.value], self.literal())
        negate = False
        if self.is_kw("NOT"):
            self.take()
            negate = True
            if not (self.is_kw("IN") or self.is_kw("LIKE")):
                raise self.fail("IN or LIKE after NOT")
        if self.is_kw("IN"):
            self.take()
            pred = self.in_list(acc)
        elif self.is_kw("LIKE"):
            self.take()
            pat = self.tok
            if pat.kind != "str":
                raise self.fail("a 'pattern' after LIKE")
            self.take()
            pred = _like(acc, pat.value)
        elif self.is_kw("IS"):
            self.take()
            if self.is_kw("NOT"):
                self.take()
                negate = True
            if self.is_kw("DEFINED"):
                self.take()
                pred = _defined(acc)
            elif self.is_kw("NULL"):
                self.take()
                pred = _undefined(acc)
            else:
                raise self.fail("DEFINED or NULL after IS")
        else:
            raise self.fail(f"a comparison (=, !=, <, <=, >, >=, IN, LIKE, IS) after {tok.text}")
        if negate:
            inner = pred
            return lambda d: not inner(d)
        return pred

    def in_list(self, acc: Accessor) -> Predicate:
        if self.tok.kind != "(":
            raise self.fail("'(' after IN")
        self.take()
        values = [self.literal()]
        while self.tok.kind == ",":
            self.take()
            values.append(self.literal())
        if self.tok.kind != ")":
            raise self.fail("',' or ')'")
        self.take()
        by_cat: dict[int, set[Scalar]] = {}
        for v in values:
            by_cat.setdefault(_CAT[type(v)], set()).add(v)
        empty: frozenset[Scalar] = frozenset()

        def pred(d: DeviceTwin) -> bool:
            v = acc(d)
            if v is None:
                return False
            return v in by_cat.get(_CAT[type(v)], empty)

        return pred


def _join(parts: list[Predicate], *, conjunction: bool) -> Predicate:
    """AND or OR of ``parts`` as nested two-argument closures (faster than all/any)."""
    pred = parts[-1]
    for left in reversed(parts[:-1]):
        right = pred
        if conjunction:
            pred = (lambda a, b: lambda d: a(d) and b(d))(left, right)
        else:
            pred = (lambda a, b: lambda d: a(d) or b(d))(left, right)
    return pred


def _always(d: DeviceTwin) -> bool:
    return True


_SAME_TYPE: Final[dict[int, frozenset[type]]] = {
    0: frozenset({bool}),
    1: frozenset({int, float}),
    2: frozenset({str}),
}


def _compare(acc: Accessor, op: Callable[[Any, Any], bool], lit: Scalar) -> Predicate:
    classes = _SAME_TYPE[_CAT[type(lit)]]  # None's class is in none of them

    def pred(d: DeviceTwin) -> bool:
        v = acc(d)
        return v.__class__ in classes and op(v, lit)

    return pred


def _like(acc: Accessor, pattern: str) -> Predicate:
    rx = re.compile(".*".join(re.escape(part) for part in pattern.split("%")), re.DOTALL)
    match = rx.fullmatch

    def pred(d: DeviceTwin) -> bool:
        v = acc(d)
        return type(v) is str and match(v) is not None

    return pred


def _defined(acc: Accessor) -> Predicate:
    return lambda d: acc(d) is not None


def _undefined(acc: Accessor) -> Predicate:
    return lambda d: acc(d) is None


def compile_where(where: str) -> Predicate:
    """Compile a WHERE expression (empty: every device).

    Raises:
        QueryError: with the 0-based ``position`` of the error in ``where``.
    """
    return _Parser(where).parse()


# --------------------------------------------------------------------------- ordering
def _order_terms(text: str) -> list[tuple[Accessor, bool]]:
    toks = _tokenize(text, "order_by")
    terms: list[tuple[Accessor, bool]] = []
    i = 0
    while True:
        tok = toks[i]
        if tok.kind != "path":
            got = "the end" if tok.kind == "end" else repr(tok.text)
            raise QueryError(f"order_by: expected a path, got {got}", tok.pos)
        acc = _accessor(tok.value, tok.pos, "order_by")
        i += 1
        desc = False
        if toks[i].kind == "kw" and toks[i].value in ("ASC", "DESC"):
            desc = toks[i].value == "DESC"
            i += 1
        terms.append((acc, desc))
        if toks[i].kind == "end":
            return terms
        if toks[i].kind != ",":
            raise QueryError(
                f"order_by: expected ASC, DESC, ',' or the end, got {toks[i].text!r}", toks[i].pos
            )
        i += 1


def _sort_key(value: Scalar | None, desc: bool) -> tuple[Any, ...]:
    # Undefined values sort last in both directions; a category rank keeps
    # values of different types from being compared with each other.
    if value is None:
        return (0,) if desc else (1,)
    return (1 if desc else 0, _CAT[type(value)], value)


def _cmp_position(
    row_keys: tuple[tuple[Any, ...], ...],
    row_id: str,
    cur_keys: tuple[tuple[Any, ...], ...],
    cur_id: str,
    desc: list[bool],
) -> int:
    for a, b, d in zip(row_keys, cur_keys, desc, strict=True):
        if a != b:
            before = a < b
            return (1 if before else -1) if d else (-1 if before else 1)
    if row_id == cur_id:
        return 0
    return -1 if row_id < cur_id else 1


# --------------------------------------------------------------------------- requests
@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query request, ready to :meth:`run` over the devices."""

    where: Predicate
    select: tuple[tuple[str, Accessor], ...] | None
    order: tuple[tuple[Accessor, bool], ...]
    group_by: tuple[str, Accessor] | None
    limit: int
    cursor: tuple[tuple[tuple[Any, ...], ...], str] | None
    fingerprint: str

    def run(self, devices: Iterable[DeviceTwin]) -> dict[str, Any]:
        """Answer the query: ``{"items", "count", "cursor"}``.

        Args:
            devices: every device, in ``id`` order (the default order needs no sort).
        """
        if self.group_by is not None:
            return self._group([d for d in devices if self.where(d)], *self.group_by)
        page, keys, more = self._select(devices)
        return self._page(page, keys[-1] if keys else (), more)

    def answer(self, devices: Iterable[DeviceTwin], event_id: str, max_bytes: int) -> bytes:
        """The encoded reply ``{"event_id", "items", "count", "cursor"}``, at most ``max_bytes``.

        A page that would be larger ends early, after the last item that fits,
        with a cursor for the rest (so a client pages on as usual).

        Raises:
            QueryError: 413 when the first item alone, or a ``group_by`` answer
                (which has no pages), is larger than ``max_bytes``.
        """
        if self.group_by is not None:
            grouped = self._group([d for d in devices if self.where(d)], *self.group_by)
            payload = dumps({"event_id": event_id, **grouped})
            if len(payload) > max_bytes:
                raise QueryError(
                    f"the answer of {grouped['count']} groups is {len(payload)} bytes, more "
                    f"than the limit of {max_bytes} bytes; group by a path with fewer values "
                    "or narrow the where",
                    code=413,
                )
            return payload
        page, keys, more = self._select(devices)
        body = self._page(page, keys[-1] if keys else (), more)
        payload = dumps({"event_id": event_id, **body})
        if len(payload) <= max_bytes:
            return payload
        # Too large: keep the longest prefix of the page that fits. Item sizes
        # give the estimate; the encoded candidate is the proof.
        items = body["items"]
        if not items:
            raise QueryError(
                f"an empty answer is {len(payload)} bytes, more than the limit of {max_bytes} "
                "bytes",
                code=413,
            )
        sizes = [len(dumps(item)) + 1 for item in items]
        fixed = len(payload) - sum(sizes) + 1
        n, total = 0, fixed
        while n < len(items) and total + sizes[n] <= max_bytes:
            total += sizes[n]
            n += 1
        while n > 0:
            cut = self._page(page[:n], keys[n - 1] if keys else (), True)
            payload = dumps({"event_id": event_id, **cut})
            excess = len(payload) - max_bytes
            if excess <= 0:
                return payload
            while n > 0 and excess > 0:  # the cursor took the room: drop enough items
                n -= 1
                excess -= sizes[n]
        raise QueryError(
            f"the first item of the page is {sizes[0] - 1} bytes, more than the limit of "
            f"{max_bytes} bytes for an answer; select fewer paths",
            code=413,
        )

    def _select(
        self, devices: Iterable[DeviceTwin]
    ) -> tuple[list[DeviceTwin], list[tuple[tuple[Any, ...], ...]], bool]:
        """The devices of the page, their sort keys (none for the default order), and
        whether more devices follow."""
        if not self.order:
            page, more = self._by_id(devices)
            return page, [], more
        where = self.where
        matches = [d for d in devices if where(d)]
        order = self.order
        desc = [d for _, d in order]
        rows: list[tuple[tuple[tuple[Any, ...], ...], str, DeviceTwin]]
        if len(order) == 1:
            acc0, desc0 = order[0]
            rows = [((_sort_key(acc0(d), desc0),), d.id, d) for d in matches]
        else:
            rows = [(tuple(_sort_key(acc(d), ds) for acc, ds in order), d.id, d) for d in matches]
        rows.sort(key=operator.itemgetter(1))
        for i in range(len(order) - 1, -1, -1):
            rows.sort(key=lambda r, i=i: r[0][i], reverse=desc[i])  # type: ignore[misc]
        start = 0
        if self.cursor is not None:
            cur_keys, cur_id = self.cursor
            lo, hi = 0, len(rows)
            while lo < hi:  # first row strictly after the cursor
                mid = (lo + hi) // 2
                r = rows[mid]
                if _cmp_position(r[0], r[1], cur_keys, cur_id, desc) <= 0:
                    lo = mid + 1
                else:
                    hi = mid
            start = lo
        chosen = rows[start : start + self.limit]
        more = start + self.limit < len(rows)
        return [r[2] for r in chosen], [r[0] for r in chosen], more

    def _by_id(self, devices: Iterable[DeviceTwin]) -> tuple[list[DeviceTwin], bool]:
        """The default order: walk the devices in id order and stop after a page."""
        where, limit = self.where, self.limit
        after = self.cursor[1] if self.cursor is not None else None
        page: list[DeviceTwin] = []
        more = False
        for d in devices:
            if after is not None and d.id <= after:
                continue
            if where(d):
                if len(page) == limit:
                    more = True
                    break
                page.append(d)
        return page, more

    def _page(
        self, page: list[DeviceTwin], last_keys: tuple[tuple[Any, ...], ...], more: bool
    ) -> dict[str, Any]:
        if self.select is None:
            items = [d.summary() for d in page]
        else:
            sel = self.select
            items = [{text: acc(d) for text, acc in sel} for d in page]
        cursor = None
        if more and page:
            cursor = _encode_cursor(self.fingerprint, last_keys, page[-1].id)
        return {"items": items, "count": len(items), "cursor": cursor}

    @staticmethod
    def _group(matches: list[DeviceTwin], text: str, acc: Accessor) -> dict[str, Any]:
        counts: dict[tuple[int, Scalar] | None, int] = {}
        for d in matches:
            v = acc(d)
            key = None if v is None else (_CAT[type(v)], v)
            counts[key] = counts.get(key, 0) + 1
        defined = sorted((k for k in counts if k is not None), key=lambda k: k)
        items: list[dict[str, Any]] = [{text: k[1], "count": counts[k]} for k in defined]
        if None in counts:
            items.append({text: None, "count": counts[None]})
        return {"items": items, "count": len(items), "cursor": None}


def _encode_cursor(fingerprint: str, keys: tuple[tuple[Any, ...], ...], dev_id: str) -> str:
    raw = json.dumps({"f": fingerprint, "k": keys, "i": dev_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii").rstrip("=")


def _decode_cursor(
    text: str, fingerprint: str, n_terms: int
) -> tuple[tuple[tuple[Any, ...], ...], str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        body = json.loads(raw)
        keys = tuple(tuple(k) for k in body["k"])
        dev_id = body["i"]
        fp = body["f"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise QueryError("cursor is not valid (pass back the cursor of a previous page)") from None
    if fp != fingerprint or len(keys) != n_terms or not isinstance(dev_id, str):
        raise QueryError("cursor belongs to a query with a different where or order_by")
    return keys, dev_id


def _optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise QueryError(f"{key} must be a string or null")
    return value


def parse_query(body: Mapping[str, Any]) -> Query:
    """Validate and compile a query request body.

    Raises:
        QueryError: a field of the wrong type, a limit below 1, an invalid
            cursor, or a ``where``/``order_by``/``select``/``group_by`` that does
            not parse (with ``position``).
    """
    for key in body:
        if key not in _REQUEST_KEYS:
            raise QueryError(
                f"unknown field {shown(key)} in a query "
                f"(allowed: {', '.join(sorted(_REQUEST_KEYS))})"
            )
    where_text = _optional_str(body, "where") or ""
    order_text = _optional_str(body, "order_by")
    group_text = _optional_str(body, "group_by")
    event_id = _optional_str(body, "event_id")
    if event_id is not None and len(event_id) > MAX_EVENT_ID:
        raise QueryError(f"event_id is longer than {MAX_EVENT_ID} characters")
    _optional_str(body, "reply_to")
    cursor_text = _optional_str(body, "cursor")
    limit = body.get("limit")
    if limit is None:
        limit = DEFAULT_LIMIT
    elif type(limit) is not int:
        raise QueryError(f"limit must be an integer, got {shown(limit)}")
    elif limit < 1:
        raise QueryError(f"limit must be at least 1, got {limit}")
    limit = min(limit, MAX_LIMIT)
    select_raw = body.get("select")
    select: tuple[tuple[str, Accessor], ...] | None = None
    if select_raw is not None:
        if not isinstance(select_raw, list) or not select_raw:
            raise QueryError("select must be a non-empty list of paths or null")
        entries = []
        for item in select_raw:
            if not isinstance(item, str):
                raise QueryError(f"select entries must be path strings, got {shown(item)}")
            entries.append((item, parse_path(item, "select")))
        select = tuple(entries)
    where = compile_where(where_text)
    group: tuple[str, Accessor] | None = None
    if group_text is not None:
        if select is not None or order_text is not None:
            raise QueryError("group_by cannot be combined with select or order_by")
        group = (group_text, parse_path(group_text, "group_by"))
    order = tuple(_order_terms(order_text)) if order_text else ()
    fingerprint = hashlib.sha256(f"{where_text}\x00{order_text or ''}".encode()).hexdigest()[:16]
    cursor = None
    if cursor_text is not None and group is None:
        cursor = _decode_cursor(cursor_text, fingerprint, len(order))
    return Query(where, select, order, group, limit, cursor, fingerprint)
