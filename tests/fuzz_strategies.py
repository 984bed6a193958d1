"""Hypothesis strategies for fuzzing the topics the daemon listens on.

A `Case` is one MQTT message: topic, payload bytes, retain flag, and the request metadata
(an MQTT 5 response topic and correlation data, or the 3.1.1 style `response_topic` /
`correlation_id` inside the JSON). Payloads come in kinds an attacker, a broken device or a
careless client would send: random bytes, invalid UTF-8, deep nesting, huge and non-finite
numbers (as the NaN/Infinity tokens stdlib `json` writes), wrong types, structurally valid
bodies generated from the payload models' JSON Schemas with one field mutated, long and wild
ids in the topic and in the body, and bodies over the size limit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub
from pydantic import BaseModel

Json = Any
Strategy = st.SearchStrategy

# Numbers a parser or a controller may choke on (stdlib json writes NaN/Infinity tokens).
EXTREME_NUMBERS: tuple[float | int, ...] = (
    1e308, -1e308, math.inf, -math.inf, math.nan, 5e-324, -0.0, 2**53 + 1, 2**63, -(2**63) - 1, 10**400,
)  # fmt: skip
# Ids that are too long, look like paths or wildcards, or are not ASCII.
WILD_IDS: tuple[str, ...] = (
    "", ".", "..", "../..", "a" * 65, "a" * 80, "x" * 3000, "+", "#", "a/b", "a/+/#", "ü" * 70, "\u202eA0",
    " A0", "A0 ", "A0\n", "null", "NaN", "😀" * 20, "A0;DROP TABLE audit", "%2F", "\\", "A" * 64,
)  # fmt: skip
# Characters an MQTT topic may carry (no controls, surrogates or noncharacters: the broker drops
# a client that sends them, which would end the test's session, not test the daemon).
TOPIC_CHARS = st.characters(blacklist_categories=("Cc", "Cs", "Cn", "Co"), blacklist_characters="+#/")


def publishable(topic: str) -> bool:
    """A topic name a client may PUBLISH (no wildcards, no NUL/controls, fits the length field)."""
    return (
        bool(topic)
        and "+" not in topic
        and "#" not in topic
        and all(c.isprintable() or c == " " for c in topic)
        and len(topic.encode()) < 65_000
    )


def topic_ids(known: Sequence[str]) -> Strategy[str]:
    """An id to put into one topic level: a known one, a wild one, or any text."""
    wild = [w for w in WILD_IDS if w and publishable(w) and "/" not in w]
    options: list[Strategy[str]] = [
        st.sampled_from(wild),
        st.sampled_from(["a" * 65, "a" * 80, "x" * 3000]),  # longer than any id column (issue 10 #2)
        st.text(TOPIC_CHARS, min_size=1, max_size=90),
    ]
    if known:
        options.insert(0, st.sampled_from(sorted(known)))
    return st.one_of(*options)


def body_ids(known: Sequence[str]) -> Strategy[str]:
    """An id inside a JSON body: anything a string can hold."""
    options: list[Strategy[str]] = [st.sampled_from(WILD_IDS), st.text(max_size=100)]
    if known:
        options.insert(0, st.sampled_from(sorted(known)))
    return st.one_of(*options)


def json_values(max_leaves: int = 12) -> Strategy[Json]:
    """Any JSON value, with extreme numbers among the leaves."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        st.sampled_from(EXTREME_NUMBERS),
        st.text(max_size=40),
        st.sampled_from(WILD_IDS),
    )
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=max_leaves,
    )


def encode(value: Json) -> bytes:
    """JSON as a sloppy client writes it: NaN/Infinity tokens and huge integers allowed."""
    return json.dumps(value, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


# ----- structurally valid bodies from the payload models -----------------------------------------


def _resolve(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _resolve(defs[ref.rsplit("/", 1)[-1]], defs)
    return schema


def from_schema(
    schema: Mapping[str, Any], defs: Mapping[str, Any], ctx: FuzzContext, name: str = ""
) -> Strategy[Json]:
    """A value valid for `schema` (the subset pydantic emits), with plausible ids and times."""
    schema = _resolve(schema, defs)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(list(schema["enum"]))
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of(*(from_schema(s, defs, ctx, name) for s in schema[key]))
    if "allOf" in schema:
        return from_schema(schema["allOf"][0], defs, ctx, name)
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind in {"number", "integer"}:
        lo = schema.get("minimum", schema.get("exclusiveMinimum"))
        hi = schema.get("maximum", schema.get("exclusiveMaximum"))
        if name in {"ts", "start", "end", "departure_ts"}:
            now = ctx.now()
            return st.floats(now - 600, now + 7200)
        if lo is None:
            lo = -1000 if hi is None or hi > 0 else hi - 1000
        if hi is None:
            hi = max(lo + 1000, 100)
        if kind == "integer":
            return st.integers(math.ceil(lo) + ("exclusiveMinimum" in schema), math.floor(hi))
        return st.floats(
            lo, hi, exclude_min="exclusiveMinimum" in schema, exclude_max="exclusiveMaximum" in schema
        )
    if kind == "string":
        known = ctx.ids_for(name)
        lo, hi = schema.get("minLength", 0), schema.get("maxLength", 60)
        text = st.text(min_size=lo, max_size=min(hi, 60))
        return st.one_of(st.sampled_from(sorted(known)), text) if known else text
    if kind == "array":
        items = schema.get("items", {})
        lo = schema.get("minItems", 0)
        hi = min(schema.get("maxItems", 4), lo + 4)
        return st.lists(from_schema(items, defs, ctx, name), min_size=lo, max_size=hi)
    if kind == "object" or "properties" in schema:
        props: Mapping[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fixed = {k: from_schema(v, defs, ctx, k) for k, v in props.items() if k in required}
        optional = {k: from_schema(v, defs, ctx, k) for k, v in props.items() if k not in required}
        return st.fixed_dictionaries(fixed, optional=optional)
    return json_values(4)


def model_bodies(model: type[BaseModel], ctx: FuzzContext) -> Strategy[dict[str, Json]]:
    """Bodies valid for a payload model."""
    schema = model.model_json_schema()
    return from_schema(schema, schema.get("$defs", {}), ctx)


def evil_values(ctx: FuzzContext) -> Strategy[Json]:
    """What to put into one field of an otherwise valid body."""
    return st.one_of(
        st.sampled_from(EXTREME_NUMBERS),
        body_ids(ctx.all_ids()),
        json_values(6),
        st.integers(1, 300).map(_nested),
        st.just("r" * 3000),
    )


def _nested(depth: int) -> Json:
    value: Json = 1
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def mutated(draw: st.DrawFn, bodies: Strategy[dict[str, Json]], ctx: FuzzContext) -> dict[str, Json]:
    """A valid body with one field replaced, dropped, or an unknown field added."""
    body = dict(draw(bodies))
    how = draw(st.sampled_from(["valid", "replace", "drop", "extra"]))
    if how == "replace" and body:
        body[draw(st.sampled_from(sorted(body)))] = draw(evil_values(ctx))
    elif how == "drop" and body:
        del body[draw(st.sampled_from(sorted(body)))]
    elif how == "extra":
        body[draw(st.text(max_size=20))] = draw(evil_values(ctx))
    return body


# ----- the context: what the running site knows -------------------------------------------------


@dataclass(frozen=True)
class FuzzContext:
    """What the strategies need from the running site: its topics, ids, models and clock."""

    base: str
    filters: tuple[str, ...]  # every topic filter the daemon subscribed to
    channels: tuple[tuple[str, tuple[type[BaseModel], ...]], ...]  # request templates and their models
    device_models: tuple[tuple[str, tuple[type[BaseModel], ...]], ...]  # device filter -> models
    device_samples: tuple[tuple[str, Callable[[float], tuple[str, bytes]]], ...]  # filter -> real message
    ids: Mapping[str, tuple[str, ...]]  # placeholder or field name -> known ids
    now: Callable[[], float]
    max_payload: int
    v5: bool

    def ids_for(self, name: str) -> tuple[str, ...]:
        return self.ids.get(name, ())

    def all_ids(self) -> tuple[str, ...]:
        return tuple(sorted({i for ids in self.ids.values() for i in ids}))

    @property
    def replies(self) -> str:
        return f"{self.base}/replies/"

    def foreign_reply_topics(self) -> tuple[str, ...]:
        """Response topics the daemon must refuse: devices' command topics, its own topics, wildcards."""
        b = self.base
        trucks = self.ids_for("truck")
        displays = self.ids_for("display")
        return (
            f"fleet/{trucks[0] if trucks else 'truck-1'}/route", "fleet/truck-1/route",
            f"displays/{displays[0] if displays else 'x'}/content", "displays/x/content",
            f"{b}/alarms/active/A1/lamp_failure", f"{b}/alarms/events", f"{b}/status", f"{b}/cmd/lights/A1",
            f"{b}/acks", "me/acks", f"{b}/replies", f"{b}/repliesX/a", f"{b}/replies/+", f"{b}/replies/#",
            f"{b}/replies/a/+/b", "#", "+", "a/+/b", "dos/v1/other-site/replies/x", "/", f"{b}/replies/\x00x",
        )  # fmt: skip


def allowed_reply(ctx: FuzzContext, topic: str | None) -> bool:
    """The target rule: a response topic is used only under `{base}/replies/`, without wildcards."""
    return (
        topic is not None
        and topic.startswith(ctx.replies)
        and len(topic) > len(ctx.replies)
        and publishable(topic)
    )


# ----- cases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One message to send, and what the target behaviour says must come back."""

    n: int
    topic: str
    filter: str
    payload: bytes
    retain: bool
    request: bool  # an API request (answered), not field or device input
    response_topic: str | None  # MQTT 5 property
    json_reply: str | None  # 3.1.1 style `response_topic` in the JSON
    kind: str  # what kind of payload, for the table

    @property
    def corr(self) -> str:
        return f"fz-{self.n}"

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        p = (
            self.payload
            if len(self.payload) <= 160
            else self.payload[:120] + b"...(%d bytes)" % len(self.payload)
        )
        return (
            f"Case(topic={self.topic[:120]!r}, payload={p!r}, retain={self.retain}, "
            f"response_topic={self.response_topic!r}, json_reply={self.json_reply!r}, kind={self.kind!r})"
        )


def _fill(template: str, pick: Callable[[tuple[str, ...]], str]) -> str:
    """Replace `{name}` levels and `+` levels with ids `pick` chooses from the known ones."""
    levels = []
    for level in template.split("/"):
        if level.startswith("{") and level.endswith("}"):
            levels.append(pick(("{", level[1:-1])))
        elif level == "+":
            levels.append(pick(("+",)))
        else:
            levels.append(level)
    return "/".join(levels)


@st.composite
def topics(draw: st.DrawFn, ctx: FuzzContext) -> tuple[str, str, tuple[type[BaseModel], ...]]:
    """(topic, the filter it matches, the models of valid bodies there) for any subscribed filter."""
    # requests are where answers are due: weight the request filters (base/...) up
    weighted = [
        f for f in ctx.filters for _ in range(8 if f.endswith("#") else 3 if f.startswith(ctx.base) else 1)
    ]
    flt = draw(st.sampled_from(weighted))
    models: tuple[type[BaseModel], ...] = ()

    def wild(slot: tuple[str, ...]) -> str:
        known = ctx.ids_for(slot[1]) if len(slot) == 2 else ctx.all_ids()
        return draw(topic_ids(known))

    if flt.endswith("#"):
        under = [(t, m) for t, m in ctx.channels if topic_matches_sub(flt, t.replace("{site}", "_"))]
        prefix = flt[:-1]
        if under and draw(st.integers(0, 9)) > 0:
            template, models = draw(st.sampled_from(under))
            topic = _fill(template, wild)
        else:  # a level the daemon has no route for
            rest = draw(st.lists(topic_ids(ctx.all_ids()), min_size=1, max_size=4))
            topic = prefix + "/".join(rest)
    else:
        topic = _fill(flt, wild)
        models = next((m for f, m in ctx.device_models if f == flt), ())
    if not publishable(topic) or not topic_matches_sub(flt, topic):
        topic = _fill(flt.replace("#", "x"), lambda _: "x")
    return topic, flt, models


@st.composite
def payloads(
    draw: st.DrawFn, ctx: FuzzContext, flt: str, models: tuple[type[BaseModel], ...]
) -> tuple[str, Json | bytes, str | None]:
    """(kind, body, topic): a JSON-able value to encode later or raw bytes; a real device's topic."""
    kinds = ["bytes", "utf8", "deep", "tokens", "json", "empty", "oversize"]
    samples = [s for f, s in ctx.device_samples if f == flt]
    if models:
        kinds += ["model"] * 6 + ["mutated"] * 3
    if samples:
        kinds += ["sample", "sample", "sample_mutated", "sample_mutated"]
    if not flt.startswith(ctx.base + "/"):
        kinds += ["deep", "deep"]  # device-side parsers have their own decoders: nest them hard
    kind = draw(st.sampled_from(kinds))
    if kind == "bytes":
        return kind, draw(st.binary(max_size=300)), None
    if kind == "utf8":
        good = draw(
            st.sampled_from(models).flatmap(lambda m: model_bodies(m, ctx)) if models else json_values(4)
        )
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]))
        text = encode(good)
        cut = draw(st.integers(0, len(text)))
        return kind, text[:cut] + bad + text[cut:], None
    if kind == "deep":
        depth = draw(st.sampled_from([100, 1000, 2000, 2500, 5000]))
        nests = [b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth, b"[" * depth]
        return kind, draw(st.sampled_from(nests)), None
    if kind == "tokens":
        token = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e308", b"-1e308", b"1e999",
                                      b"-1e999", b"1" * 400, b"-0", b"0x10", b"1_000"]))  # fmt: skip
        body: dict[str, Json] = (
            draw(model_bodies(draw(st.sampled_from(models)), ctx)) if models else {"value": 0}
        )
        numeric = [k for k, v in body.items() if isinstance(v, int | float) and not isinstance(v, bool)]
        key = (
            draw(st.sampled_from(numeric)) if numeric else draw(st.sampled_from(["level", "current_a", "ts"]))
        )
        body[key] = "__TOKEN__"
        return kind, encode(body).replace(b'"__TOKEN__"', token), None
    if kind == "json":
        return kind, draw(json_values()), None
    if kind == "empty":
        return kind, b"", None
    if kind == "oversize":
        size = draw(st.sampled_from([ctx.max_payload + 1, 2 * ctx.max_payload, 1_100_000]))
        big: dict[str, Json] = draw(model_bodies(draw(st.sampled_from(models)), ctx)) if models else {}
        big["reason"] = "r" * size
        return kind, big, None
    if kind in {"model", "mutated"}:
        bodies = model_bodies(draw(st.sampled_from(models)), ctx)
        return kind, draw(bodies if kind == "model" else mutated(bodies, ctx)), None
    where, sample = draw(st.sampled_from(samples))(ctx.now())
    if kind == "sample":
        return kind, sample, where
    try:
        value = json.loads(sample)
    except ValueError:
        return kind, sample, where
    if isinstance(value, dict) and value:
        key = draw(st.sampled_from(sorted(value)))
        value[key] = draw(evil_values(ctx))
    return kind, value, where


@st.composite
def cases(draw: st.DrawFn, ctx: FuzzContext, counter: Callable[[], int]) -> Case:
    """One message for a topic the daemon subscribed to, with request metadata where it applies."""
    topic, flt, models = draw(topics(ctx))
    kind, body, where = draw(payloads(ctx, flt, models))
    if where is not None and topic_matches_sub(flt, where):
        topic = where
    request = topic.startswith(ctx.base + "/") and not topic.startswith(ctx.base + "/field/")
    response_topic = json_reply = None
    if request:
        reply_kind = draw(st.sampled_from(["allowed", "allowed", "foreign", "none", "json", "json_foreign"]))
        if not ctx.v5 and reply_kind in {"allowed", "foreign"}:
            reply_kind = "json" if reply_kind == "allowed" else "json_foreign"
        own = ctx.replies + draw(st.sampled_from(["a", "op-1/x", "ü" * 30, "r" * 3000]))
        foreign = draw(st.sampled_from(ctx.foreign_reply_topics()))
        if reply_kind == "allowed":
            response_topic = own
        elif reply_kind == "foreign":
            response_topic = foreign if publishable(foreign) else None
            json_reply = None if publishable(foreign) else foreign  # paho refuses these as a property
        elif reply_kind in {"json", "json_foreign"}:
            json_reply = own if reply_kind == "json" else foreign
    n = counter()
    if isinstance(body, dict) and json_reply is not None:
        body = {**body, "response_topic": json_reply, "correlation_id": f"fz-{n}"}
    elif json_reply is not None and not isinstance(body, dict):
        json_reply = None  # only a JSON object can carry the 3.1.1 metadata
    payload = body if isinstance(body, bytes) else encode(body)
    retain = draw(st.integers(0, 19)) == 0
    return Case(n, topic, flt, payload, retain, request, response_topic, json_reply, kind)
