"""End to end with the real ``openai`` SDK: the Responses API, ``models.retrieve`` and embeddings.

A real gateway process on loopback in front of the fake upstream, which speaks chat completions
only: every Responses request here is translated onto the chat pipeline by the gateway.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest

from ops.fake_upstream import FakeUpstream
from ops.procs import GatewayProcess
from tests.helpers import demo_pool

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    embed = {
        "name": "fake-embed",
        "litellm_model": "openai/fake-embed",
        "api_base": upstream.url,
        "api_key": "k",
        "input_price_per_mtok": 0.02,
        "mode": "embedding",
    }
    config = {"models": [*demo_pool(upstream), embed], "storage": {"flush_interval_ms": 5}}
    with GatewayProcess(tmp_path_factory.mktemp("e2e-responses"), config) as process:
        yield process


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused-in-local-mode", max_retries=0)


def chat_id(resp_id: str) -> str:
    return "chatcmpl-" + resp_id.removeprefix("resp_")


def requests_counted(gateway: GatewayProcess) -> float:
    lines = httpx.get(f"{gateway.url}/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("compass_requests_total{"))


def test_plain_response_is_routed_recorded_and_takes_feedback(
    client: openai.OpenAI, gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    counted = requests_counted(gateway)
    response = client.responses.create(model="auto", input="hello there", instructions="Answer briefly.")
    assert response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text and response.output[0].type == "message"
    assert response.model in {"demo-small", "demo-medium", "demo-large"}
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    routing = (response.model_extra or {})["routing"]
    assert routing["model"] == response.model and routing["tier"] in {"simple", "medium", "complex"}
    sent = upstream.history[-1]["messages"]
    assert sent == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "hello there"},
    ]
    rows = gateway.sql(
        f"SELECT model, status, response_content FROM requests WHERE id = '{chat_id(response.id)}'"
    )
    assert rows == [[response.model, 200, response.output_text]]
    feedback = httpx.post(f"{gateway.url}/feedback", json={"id": response.id, "thumbs": "up"})
    assert feedback.status_code == 200 and feedback.json()["model"] == response.model
    assert requests_counted(gateway) == counted + 1  # /metrics counts it as it counts chat


def test_stored_response_and_previous_response_id(
    client: openai.OpenAI, upstream: FakeUpstream, gateway: GatewayProcess
) -> None:
    first = client.responses.create(model="demo-small", input="Name a colour.", instructions="Be terse.")
    assert client.responses.retrieve(first.id).output_text == first.output_text
    time.sleep(0.2)  # the batched write lands (reads never wait for it: pending records are in memory)
    assert gateway.sql(f"SELECT request_id FROM responses WHERE id = '{first.id}'") == [[chat_id(first.id)]]
    second = client.responses.create(
        model="demo-small", input="And another one?", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    sent = upstream.history[-1]["messages"]
    assert sent == [  # instructions are not carried over, as in OpenAI's API
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And another one?"},
    ]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="auto", input="x", previous_response_id="resp_doesnotexist")
    unstored = client.responses.create(model="auto", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_function_tools_round_trip(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    response = client.responses.create(
        model="auto", input="What is the weather in Paris?", tools=[WEATHER_TOOL], tool_choice="auto"
    )
    call = response.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    sent = upstream.history[-1]
    assert sent["tools"][0]["function"]["name"] == "get_weather" and sent["tool_choice"] == "auto"
    follow = client.responses.create(
        model="auto",
        previous_response_id=response.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}],
    )
    assert follow.output_text
    messages = upstream.history[-1]["messages"]
    assert messages[-2]["tool_calls"][0]["id"] == call.call_id
    assert messages[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": '{"temp_c": 21}'}


def test_items_input_json_schema_and_max_output_tokens(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    response = client.responses.create(
        model="demo-medium",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Give me JSON"}]}],
        text={"format": {"type": "json_schema", "name": "reply", "schema": schema, "strict": True}},
        temperature=0.2,
    )
    assert isinstance(json.loads(response.output_text), dict)
    sent = upstream.history[-1]
    assert sent["response_format"]["json_schema"]["schema"] == schema and sent["temperature"] == 0.2
    cut = client.responses.create(model="demo-medium", input="tell me a long story", max_output_tokens=3)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert upstream.history[-1]["max_tokens"] == 3


def test_streamed_response_event_sequence(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    with client.responses.stream(model="auto", input="tell me a story") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and text == final.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.usage is not None and final.usage.output_tokens > 0
    rows = gateway.sql(f"SELECT stream, response_content FROM requests WHERE id = '{chat_id(final.id)}'")
    assert rows == [[True, text]]


def test_streamed_function_call(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(model="auto", input="Weather in Oslo?", tools=[WEATHER_TOOL], stream=True)
    )
    kinds = [event.type for event in events]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments) == {"city": "Oslo"}
    assert events[-1].response.output[0].name == "get_weather"


def test_a_stream_that_breaks_ends_with_response_failed(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    events = list(
        client.responses.create(model="demo-small", input="story [[fake:stream_error]] please", stream=True)
    )
    assert events[0].type == "response.created" and events[-1].type == "response.failed"
    assert "response.completed" not in [e.type for e in events]
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None and failed.error.message
    with pytest.raises(openai.NotFoundError):  # a failed response is not stored
        client.responses.retrieve(failed.id)
    rows = gateway.sql(f"SELECT status FROM requests WHERE id = '{chat_id(failed.id)}'")
    assert rows and rows[0][0] >= 500


def test_upstream_failure_before_the_answer_is_an_openai_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as excinfo:
        client.responses.create(model="demo-small", input="fail [[fake:error=500]]")
    assert excinfo.value.status_code == 502 and excinfo.value.body["type"] == "upstream_error"  # type: ignore[index]


@pytest.mark.parametrize(
    "body",
    [
        b"{oops",
        b"{}",
        b'{"input": ""}',
        b'{"input": 42}',
        b'{"input": [{"type": "mystery"}]}',
        b'{"input": [{"role": "wizard", "content": "hi"}]}',
        b'{"input": "hi", "tools": [{"type": "web_search"}]}',
        b'{"input": "hi", "tools": [{"type": "function"}]}',
        b'{"input": "hi", "temperature": 9}',
        b'{"input": "hi", "max_output_tokens": 0}',
        b'{"input": "hi", "text": {"format": {"type": "json_schema"}}}',
        b'{"input": [{"type": "function_call_output", "output": "x"}]}',
    ],
)
def test_malformed_bodies_are_openai_400s(gateway: GatewayProcess, body: bytes) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/responses", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert {"message", "type", "code"} <= set(response.json()["error"])


def test_models_retrieve_every_listed_id(client: openai.OpenAI) -> None:
    listed = client.models.list().data
    assert {"auto", "compass/auto", "demo-small", "compass/minilm", "fake-embed"} <= {m.id for m in listed}
    for model in listed:
        assert client.models.retrieve(model.id).id == model.id
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.models.retrieve("gpt-99")
    assert excinfo.value.code == "model_not_found"


def test_embeddings_local_and_passed_through(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    from layers.embedding import Embedder

    texts = ["a semantic cache", "routes each request"]
    default = client.embeddings.create(model="compass/minilm", input=texts)  # the SDK asks for base64
    floats = client.embeddings.create(model="compass/minilm", input=texts, encoding_format="float")
    expected = Embedder().encode(texts)
    for result in (default, floats):
        got = np.array([d.embedding for d in result.data], dtype=np.float32)
        assert np.allclose(got, expected, atol=1e-5)
    assert default.usage.prompt_tokens > 0
    single = client.embeddings.create(model="compass/minilm", input=texts[0])
    assert np.allclose(single.data[0].embedding, expected[0], atol=1e-5)
    passed = client.embeddings.create(model="fake-embed", input=["x", "y", "z"])
    assert [len(d.embedding) for d in passed.data] == [16, 16, 16]
    rows = gateway.sql(
        "SELECT model, count(*) FROM requests WHERE routing_method = 'embeddings' GROUP BY 1 ORDER BY 1"
    )
    assert rows == [["compass/minilm", 3], ["fake-embed", 1]]


def test_openai_agents_sdk_runs_an_agent_with_a_function_tool(gateway: GatewayProcess) -> None:
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"Sunny and 21C in {city}"

    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    model = agents.OpenAIResponsesModel(model="auto", openai_client=client)
    agent = agents.Agent(name="weather", instructions="Use the tool.", tools=[get_weather], model=model)
    result = agents.Runner.run_sync(agent, "What is the weather in Paris?", max_turns=4)
    assert calls == ["Paris"] and isinstance(result.final_output, str) and result.final_output


def test_langchain_chat_openai_with_the_responses_api(gateway: GatewayProcess) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(
        model="auto", base_url=f"{gateway.url}/v1", api_key="unused", use_responses_api=True, max_retries=0
    )
    message = llm.invoke("Say hello")
    assert message.text and message.response_metadata.get("id", "").startswith("resp_")
    streamed = "".join(chunk.text for chunk in llm.stream("Say hello again"))
    assert streamed
    bound = llm.bind_tools([{k: v for k, v in WEATHER_TOOL.items()}])
    called = bound.invoke("What is the weather in Rome?")
    assert called.tool_calls and called.tool_calls[0]["name"] == "get_weather"
    assert called.tool_calls[0]["args"] == {"city": "Rome"}
