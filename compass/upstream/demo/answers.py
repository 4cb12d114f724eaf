"""Deterministic fake answers: text, tool calls, JSON, logprobs, and the ``[[fake:...]]`` directives.

The same prompt and model always give the same answer, so tests can compare runs. Directives in the
last user message force behaviour for one request, optionally for one model only::

    [[fake:error=503]]  [[fake:error=429@demo-small]]  [[fake:hang]]  [[fake:hang=2.5]]
    [[fake:stream_error]]  [[fake:delay_ms=300]]  [[fake:tokens=500]]
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

DIRECTIVE = re.compile(r"\[\[fake:([a-z_]+)(?:=([^\]@]*))?(?:@([^\]]+))?\]\]")
WORDS = (
    "the answer depends on the details but in short it works like this first consider what you "
    "need then pick the simplest approach that meets it check the result against an example and "
    "refine where the example shows a gap this keeps the solution small clear and easy to verify"
).split()


@dataclass
class Directives:
    error: int | None = None
    hang_s: float | None = None
    stream_error: bool = False
    delay_ms: float | None = None
    tokens: int | None = None
    seen: list[str] = field(default_factory=list)


def text_of(content: Any) -> str:
    """The text of an OpenAI message content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


def parse_directives(text: str, model: str) -> Directives:
    found = Directives()
    for name, value, only_for in DIRECTIVE.findall(text):
        if only_for and only_for != model:
            continue
        found.seen.append(name)
        if name == "error":
            found.error = int(value or 503)
        elif name == "hang":
            found.hang_s = float(value) if value else 3600.0
        elif name == "stream_error":
            found.stream_error = True
        elif name == "delay_ms":
            found.delay_ms = float(value or 0)
        elif name == "tokens":
            found.tokens = int(value or 1)
    return found


def unit_hash(*parts: str) -> float:
    """A stable number in [0, 1) from the parts."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """About four characters a token plus a few per message, as tiktoken roughly gives."""
    chars = sum(len(text_of(m.get("content"))) for m in messages if isinstance(m, dict))
    return max(1, chars // 4 + 4 * len(messages))


def answer_tokens(prompt: str, model: str, typical: int, choice: int = 0) -> list[str]:
    """The answer as a list of tokens (a word plus its leading space each)."""
    count = max(4, int(typical * (0.75 + 0.5 * unit_hash(prompt, model, "len"))))
    head = f"[{model}] "
    quoted = " ".join(DIRECTIVE.sub("", prompt).split()[:8])
    opening = f'Demo answer to "{quoted}":' if quoted else "Demo answer:"
    tokens = [head.rstrip(), *(" " + w for w in opening.split())]
    start = int(unit_hash(prompt, model, str(choice)) * len(WORDS))
    while len(tokens) < count:
        tokens.append(" " + WORDS[(start + len(tokens)) % len(WORDS)])
    return tokens[:count]


def apply_stop(tokens: list[str], stop: Any) -> tuple[list[str], bool]:
    """Cut the answer before the first stop sequence; True when one was found."""
    stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if isinstance(s, str) and s]
    if not stops:
        return tokens, False
    text = "".join(tokens)
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut < 0:
        return tokens, False
    kept, length = [], 0
    for token in tokens:
        if length + len(token) > cut:
            if cut > length:
                kept.append(token[: cut - length])
            break
        kept.append(token)
        length += len(token)
    return kept, True


def json_answer(tokens: list[str], response_format: dict[str, Any]) -> str:
    """A JSON document that honours ``json_object`` and (loosely) ``json_schema`` formats."""
    text = "".join(tokens).strip()
    schema = (response_format.get("json_schema") or {}).get("schema") or {}
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if properties:
        return json.dumps({name: example_value(spec, text) for name, spec in properties.items()})
    return json.dumps({"answer": text})


def example_value(spec: Any, text: str) -> Any:
    kind = spec.get("type") if isinstance(spec, dict) else None
    if isinstance(spec, dict) and spec.get("enum"):
        return spec["enum"][0]
    return {
        "integer": 1,
        "number": 1.0,
        "boolean": True,
        "array": [],
        "object": {},
    }.get(kind, text[:40] if kind == "string" or kind is None else None)


def tool_call(
    tools: list[dict[str, Any]], tool_choice: Any, prompt: str, model: str
) -> dict[str, Any] | None:
    """One call to the chosen (or first) function, arguments filled from the schema and the prompt."""
    if not tools or tool_choice == "none":
        return None
    functions = [t.get("function") or {} for t in tools if isinstance(t, dict)]
    wanted = (tool_choice or {}).get("function", {}).get("name") if isinstance(tool_choice, dict) else None
    function = next((f for f in functions if f.get("name") == wanted), functions[0] if functions else None)
    if not function:
        return None
    params = function.get("parameters") or {}
    capitalised = [w.strip("?.,!") for w in prompt.split()[1:] if w[:1].isupper()]
    arguments = {}
    for name, spec in (params.get("properties") or {}).items():
        value = example_value(spec, prompt)
        if isinstance(value, str) and capitalised:
            value = capitalised[0]
        arguments[name] = value
    call_id = "call_" + hashlib.blake2b(f"{prompt}{model}".encode(), digest_size=8).hexdigest()
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": function.get("name", "f"), "arguments": json.dumps(arguments)},
    }


def logprobs_for(tokens: list[str], top: int) -> dict[str, Any]:
    """OpenAI's ``choices[].logprobs`` shape with made-up but stable values."""
    content = []
    for token in tokens:
        logprob = -round(unit_hash(token, "lp") * 2, 4)
        alternatives = [
            {"token": token + str(i), "logprob": logprob - i - 1, "bytes": list((token + str(i)).encode())}
            for i in range(top)
        ]
        content.append(
            {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": alternatives}
        )
    return {"content": content, "refusal": None}


def grade(prompt: str, model: str, quality: float) -> float:
    """Whether this model's answer to this prompt is 'good' (1.0) or not (0.0), stably.

    Long or technical prompts are harder: a weaker model's chance shrinks on them, which gives the
    bandit something to learn from tier and content.
    """
    hard = min(
        1.0,
        len(prompt) / 600 + (0.3 if re.search(r"prove|algorithm|derive|optimi[sz]e", prompt, re.I) else 0),
    )
    chance = quality * (1 - 0.5 * hard * (1 - quality))
    return 1.0 if unit_hash(prompt, model, "grade") < chance else 0.0
