"""Bad input: a schemathesis run over the OpenAPI spec and a hypothesis fuzz of chat bodies.

``python -m ops.faults.fuzz --examples 2000`` starts a fake upstream and a gateway, then checks
that no input gets a 500 and that every 4xx (and 5xx) carries an OpenAI error body
``{"error": {"message", "type", "code"}}``. The chat fuzz mixes structurally valid bodies with
wrong types, huge numbers, odd unicode, deep nesting, missing and extra fields, bad roles and
content parts, and byte-level damage (truncation, invalid UTF-8, NaN literals, wrong media types).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from ops.faults.harness import (
    ADMIN_KEY,
    POOL_SHAPE,
    admin_headers,
    gateway_config,
    home_dir,
    is_openai_error,
    json_or_none,
    loopback_only,
    read_stream,
    sse_data,
)

ROLES = ["system", "developer", "user", "assistant", "tool", "function"]
BAD_ROLES = ["", "User", "bot", "model", "admin", "\u0000", "système"]
PART_TYPES = ["text", "image_url", "input_audio", "file", "refusal", "", "TEXT", "video"]
MODELS = ["auto", "compass/auto", "compass/cheap", "compass/best", *POOL_SHAPE, "gpt-99", ""]
MEDIA_TYPES = [
    None,
    "text/plain",
    "application/x-www-form-urlencoded",
    "application/json; charset=latin-1",
    "multipart/form-data; boundary=x",
]
NUMERIC_FIELDS = ["temperature", "top_p", "n", "max_tokens", "max_completion_tokens", "seed", "top_logprobs"]
TYPED_FIELDS = [*NUMERIC_FIELDS, "model", "stream", "stop", "tools", "messages", "stream_options"]
MUTATIONS = [
    "field_type",
    "huge",
    "role",
    "part",
    "message_type",
    "drop",
    "extra",
    "empty",
    "compass",
    "root",
]
BYTE_DAMAGE = ["truncate", "utf8", "nan", "deep", "dupe", "garbage", "type"]
Strategy = st.SearchStrategy[Any]

HUGE_INTS = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80), st.sampled_from([2**63, -(2**63) - 1])
)
ODD_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\u0000", "\ufeff", "🙂" * 50, "\u202e", "a\r\nb", "[[fake:tokens=3]]"]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
)
FLOATS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e308, -1e308, 5e-324, -0.0])
)
SCALARS = st.one_of(st.none(), st.booleans(), HUGE_INTS, FLOATS, ODD_TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def text_part() -> Strategy:
    return st.fixed_dictionaries({"type": st.just("text"), "text": ODD_TEXT})


def valid_message() -> Strategy:
    content = st.one_of(ODD_TEXT, ODD_TEXT, st.lists(text_part(), min_size=1, max_size=3))
    return st.fixed_dictionaries(
        {"role": st.sampled_from(ROLES), "content": content},
        optional={"name": st.text(min_size=1, max_size=20)},
    )


def valid_tools() -> Strategy:
    function = st.fixed_dictionaries(
        {"name": st.text(min_size=1, max_size=16)},
        optional={"description": ODD_TEXT, "parameters": st.just({"type": "object", "properties": {}})},
    )
    return st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": function}), max_size=2)


def valid_bodies() -> Strategy:
    """Bodies the gateway should accept: every field in range, the right type."""
    compass = st.fixed_dictionaries(
        {},
        optional={
            "cost_weight": st.floats(min_value=0, max_value=100),
            "cache": st.sampled_from(["default", "no-store", "no-cache", "refresh"]),
            "candidates": st.lists(st.sampled_from(list(POOL_SHAPE)), min_size=1, max_size=3),
        },
    )
    return st.fixed_dictionaries(
        {"messages": st.lists(valid_message(), min_size=1, max_size=4)},
        optional={
            "model": st.sampled_from(MODELS[:-2]),
            "stream": st.booleans(),
            "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
            "temperature": st.floats(min_value=0, max_value=2),
            "top_p": st.floats(min_value=0, max_value=1),
            "n": st.integers(min_value=1, max_value=3),
            "stop": st.one_of(ODD_TEXT, st.lists(ODD_TEXT, max_size=4)),
            "max_tokens": st.integers(min_value=1, max_value=65_536),
            "presence_penalty": st.floats(min_value=-2, max_value=2),
            "logit_bias": st.dictionaries(st.text(max_size=6), st.floats(-100, 100), max_size=3),
            "logprobs": st.booleans(),
            "top_logprobs": st.integers(min_value=0, max_value=20),
            "seed": st.integers(min_value=-(2**63), max_value=2**63 - 1),
            "user": ODD_TEXT,
            "tools": valid_tools(),
            "tool_choice": st.sampled_from(["auto", "none"]),
            "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}),
            "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3),
            "compass": compass,
        },
    )


@st.composite
def mutate(draw: st.DrawFn, body: dict[str, Any]) -> Any:
    """One kind of damage: a wrong type, a huge number, a bad role or part, a missing or extra field."""
    kind = draw(st.sampled_from(MUTATIONS))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        messages = body["messages"] = [{"role": "user", "content": "x"}]
    index = draw(st.integers(min_value=0, max_value=len(messages) - 1))
    if not isinstance(messages[index], dict):
        messages[index] = {"role": "user", "content": "x"}
    message = messages[index]
    if kind == "field_type":
        body[draw(st.sampled_from(TYPED_FIELDS))] = draw(JSON_VALUES)
    elif kind == "huge":
        body[draw(st.sampled_from(NUMERIC_FIELDS))] = draw(st.one_of(HUGE_INTS, FLOATS))
    elif kind == "role":
        message["role"] = draw(st.one_of(st.sampled_from(BAD_ROLES), JSON_VALUES))
    elif kind == "part":
        kinds = st.one_of(st.sampled_from(PART_TYPES), JSON_VALUES)
        part = draw(st.fixed_dictionaries({}, optional={"type": kinds, "text": JSON_VALUES}))
        message["content"] = [part, draw(JSON_VALUES)] if draw(st.booleans()) else [part]
    elif kind == "message_type":
        messages[index] = draw(JSON_VALUES)
    elif kind == "drop":
        (body if draw(st.booleans()) else message).pop(draw(st.sampled_from(["messages", "role"])), None)
    elif kind == "extra":
        (body if draw(st.booleans()) else message)[draw(st.text(max_size=12))] = draw(JSON_VALUES)
    elif kind == "empty":
        body["messages"] = []
    elif kind == "compass":
        keys = st.sampled_from(["cost_weight", "cache", "candidates", "x"])
        body["compass"] = draw(st.dictionaries(keys, JSON_VALUES))
    elif kind == "root":
        return draw(JSON_VALUES)
    return body


@st.composite
def chat_bodies(draw: st.DrawFn) -> Any:
    """A chat request body as a Python value: valid, or valid with up to three kinds of damage."""
    body = draw(valid_bodies())
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        body = draw(mutate(body)) if isinstance(body, dict) else body
    return body


def deep(depth: int, open_: bytes, close: bytes, leaf: bytes = b"1") -> bytes:
    return open_ * depth + leaf + close * depth


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """``(body bytes, content type)``: a JSON body, sometimes damaged at the byte level."""
    value = draw(chat_bodies())
    try:
        raw = json.dumps(value, ensure_ascii=draw(st.booleans())).encode("utf-8", errors="surrogatepass")
    except (ValueError, RecursionError):
        raw = b"{}"
    damage = draw(st.sampled_from(["none"] * 8 + BYTE_DAMAGE))
    content_type: str | None = "application/json"
    if damage == "truncate" and raw:
        raw = raw[: draw(st.integers(min_value=0, max_value=len(raw) - 1))]
    elif damage == "utf8":
        raw = raw.replace(b'"', b'"\xff\xfe', 1) if b'"' in raw else b'{"messages": "\xc3\x28"}'
    elif damage == "nan":
        literal = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-0", b"1e-999"]))
        raw = b'{"messages": [{"role": "user", "content": "x"}], "temperature": ' + literal + b"}"
    elif damage == "deep":
        depth = draw(st.sampled_from([100, 1000, 10_000, 100_000]))
        shape = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        raw = b'{"messages": [{"role": "user", "content": "x"}], "metadata": ' + deep(depth, *shape) + b"}"
    elif damage == "dupe":
        raw = b'{"messages": [], "messages": [{"role": "user", "content": "x"}], "model": "auto", "model": 5}'
    elif damage == "garbage":
        raw = draw(st.binary(max_size=64))
    elif damage == "type":
        content_type = draw(st.sampled_from(MEDIA_TYPES))
    return raw, content_type


@dataclass
class FuzzReport:
    """Responses by status, and every response that broke a rule (500, or an error without the body)."""

    name: str
    sent: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    problems: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, status: int, problem: str | None, example: Any) -> None:
        self.sent += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if problem is not None and len(self.problems) < 50:
            self.problems.append({"status": status, "problem": problem, "example": repr(example)[:600]})

    @property
    def passed(self) -> bool:
        return not self.problems and self.by_status.get(500, 0) == 0

    def line(self) -> str:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_status.items()))
        mark = "PASS" if self.passed else "FAIL"
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        return (
            f"[{mark}] {self.name}: {self.sent} requests in {self.seconds:.1f}s, statuses {{{statuses}}},"
            f" {len(self.problems)} problems{skipped}"
        )


def is_anthropic_error(body: Any) -> bool:
    """``{"type": "error", "error": {"type": str, "message": str}}`` as Anthropic's API returns it."""
    error = body.get("error") if isinstance(body, dict) else None
    return (
        body.get("type") == "error"
        and isinstance(error, dict)
        and isinstance(error.get("type"), str)
        and isinstance(error.get("message"), str)
        and bool(error["message"])
    )


def judge_anthropic(status: int, content: bytes, media_type: str) -> str | None:
    """The Messages API's rule: Anthropic's error shape, and a stream ends in message_stop or error."""
    if status >= 400:
        body = json_or_none(content)
        return (
            None
            if is_anthropic_error(body)
            else f"{status} without an Anthropic error body: {content[:200]!r}"
        )
    if status == 200 and "text/event-stream" in media_type:
        events = [json_or_none(data) for data in sse_data(content.decode("utf-8", errors="replace"))]
        last = events[-1] if events else None
        if not isinstance(last, dict) or last.get("type") not in ("message_stop", "error"):
            return "stream ended without message_stop or an error event"
        if last["type"] == "error" and not is_anthropic_error(last):
            return f"stream error event without an Anthropic error body: {last}"
    return None


def judge(status: int, content: bytes, media_type: str, path: str = "") -> str | None:
    """The rule every response must keep; ``None`` when it does."""
    if status == 500:
        return "500 internal error"
    if path.startswith("/v1/messages"):
        return judge_anthropic(status, content, media_type)
    if status >= 400:
        body = json_or_none(content)
        return None if is_openai_error(body) else f"{status} without an OpenAI error body: {content[:200]!r}"
    if status == 200 and "text/event-stream" in media_type:
        outcome = read_stream(content.decode("utf-8", errors="replace"))
        if outcome.error is not None and not is_openai_error(outcome.error):
            return f"stream error event without an OpenAI error body: {outcome.error}"
        if outcome.error is None and not outcome.done:
            return "stream ended without [DONE] or an error event"
    return None


def fuzz_chat(
    base_url: str, examples: int, seed_value: int = 0, headers: dict[str, str] | None = None
) -> FuzzReport:
    """``examples`` hypothesis-generated bodies to ``/v1/chat/completions`` (and ``/v1/route``)."""
    loopback_only(base_url)
    report = FuzzReport("chat body fuzz")
    started = time.monotonic()
    with httpx.Client(timeout=60, headers=headers or {}) as client:

        @seed(seed_value)
        @settings(
            max_examples=examples,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(request=raw_requests(), path=st.sampled_from(["/v1/chat/completions"] * 4 + ["/v1/route"]))
        def probe(request: tuple[bytes, str | None], path: str) -> None:
            raw, content_type = request
            send_headers = {"content-type": content_type} if content_type else {}
            try:
                response = client.post(f"{base_url}{path}", content=raw, headers=send_headers)
            except httpx.HTTPError as exc:
                report.add(0, f"transport error: {exc!r}", raw[:300])
                return
            problem = judge(response.status_code, response.content, response.headers.get("content-type", ""))
            report.add(response.status_code, problem, raw[:300])

        probe()
    report.seconds = time.monotonic() - started
    return report


def fuzz_schema(
    base_url: str, max_examples: int = 50, seed_value: int = 0, headers: dict[str, str] | None = None
) -> FuzzReport:
    """schemathesis over every operation of ``/docs/openapi.json``, positive and negative data."""
    import schemathesis

    loopback_only(base_url)
    report = FuzzReport("schemathesis (OpenAPI)")
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{base_url}/docs/openapi.json")
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @seed(seed_value)
            @settings(
                max_examples=max_examples,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def probe(case: Any) -> None:
                try:
                    response = case.call(base_url=base_url, headers=dict(headers or {}), timeout=60)
                except Exception as exc:  # a transport failure is a finding too
                    report.add(0, f"{case.method} {case.path}: {exc!r}", case.body)
                    return
                problem = judge(
                    response.status_code,
                    response.content,
                    response.headers.get("content-type", ""),
                    case.path,
                )
                label = f"{case.method} {case.formatted_path}"
                example = {"query": case.query, "path": case.path_parameters, "body": case.body}
                report.add(response.status_code, f"{label}: {problem}" if problem else None, example)

            try:
                probe()
            except Unsatisfiable:  # e.g. no negative data exists for an operation without inputs
                report.skipped.append(f"{operation.label} ({mode.value})")
    report.seconds = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> int:
    from ops.bench.common import write_json
    from ops.fake_upstream import FakeUpstream, instant_config
    from ops.faults.harness import env_offline
    from ops.procs import GatewayProcess

    parser = argparse.ArgumentParser(prog="python -m ops.faults.fuzz", description=__doc__)
    parser.add_argument("--examples", type=int, default=2000, help="chat bodies to fuzz")
    parser.add_argument("--schema-examples", type=int, default=100, help="per operation and mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast-layers", action="store_true", help="length classifier, no cache")
    parser.add_argument("--out", default="fuzz", help="results/<name>.json; '' to skip")
    args = parser.parse_args(argv)
    upstream = FakeUpstream(instant_config(*POOL_SHAPE)).start()
    config = gateway_config(
        upstream.url,
        timeout_s=10,
        fast_layers=args.fast_layers,
        admin_key=ADMIN_KEY,
        storage={"flush_interval_ms": 20},
    )
    gateway = GatewayProcess(home_dir("fuzz"), config, env=env_offline())
    try:
        gateway.start()
        reports = [
            fuzz_chat(gateway.url, args.examples, args.seed, admin_headers(ADMIN_KEY)),
            fuzz_schema(gateway.url, args.schema_examples, args.seed, admin_headers(ADMIN_KEY)),
            fuzz_schema(gateway.url, max(5, args.schema_examples // 10), args.seed),  # no key: 401s
        ]
        reports[-1].name += " without a key"
    finally:
        gateway.stop()
        upstream.stop()
    for report in reports:
        print(report.line())
        for problem in report.problems[:10]:
            print("   ", problem)
    passed = all(r.passed for r in reports)
    if args.out:
        payload = {"passed": passed, "options": vars(args), "reports": [r.__dict__ for r in reports]}
        print(f"wrote {write_json(args.out, payload)}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
