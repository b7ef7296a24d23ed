"""The official OpenAI Python SDK against a real llamagate with the real model.

Started by scripts/test.sh: runs `llamagate serve` on a free port, drives it through
`openai.OpenAI(base_url=...)` (chat, streaming with usage, legacy completions, models,
typed errors, tools streamed and not, logprobs, structured output parsed into a
pydantic model, embeddings in the SDK's default base64 and as floats, compared with the
sentence-transformers reference; the Responses API: create, stream, a tool loop with
previous_response_id, retrieve/delete, structured output) and prints "N passed, M failed".
"""

import json
import math
import os
import struct
import sys
import traceback

import openai
from pydantic import BaseModel

import server

EMBED_FILE = os.path.join(server.ROOT, "models", "all-MiniLM-L6-v2.F16.gguf")
REFERENCE = os.path.join(server.ROOT, "tests", "fixtures", "minilm_reference.json")

WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"], "additionalProperties": False}}}]


def start_server():
    return server.start_server(
        f'[[models]]\nname = "smollm2"\nsource = "{server.MODEL_FILE}"\ndevice = "cpu"\npinned = true\n'
        f'[[models]]\nname = "minilm"\nsource = "{EMBED_FILE}"\nengine = "llama.cpp"\n'
        + server.hermes_model("smol-hermes"))



class Cat(BaseModel):
    name: str
    age: int


def main():
    proc, config, base = start_server()
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    results = []

    def check(name, fn):
        try:
            fn()
            results.append(True)
            print(f"ok   {name}")
        except Exception:
            results.append(False)
            print(f"FAIL {name}\n{traceback.format_exc()}")

    def chat():
        r = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Say hi"}],
                                           max_tokens=8, temperature=0)
        assert r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    def stream():
        s = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Say hi"}],
                                           max_tokens=8, temperature=0, stream=True,
                                           stream_options={"include_usage": True})
        text, usage, finish = "", None, None
        for chunk in s:
            usage = chunk.usage or usage
            for c in chunk.choices:
                text += c.delta.content or ""
                finish = c.finish_reason or finish
        assert text and usage and usage.completion_tokens >= 1 and finish in ("stop", "length")

    def completions():
        r = client.completions.create(model="smollm2", prompt=["Hello", "Bye"], max_tokens=4, temperature=0)
        assert [c.index for c in r.choices] == [0, 1] and r.usage.completion_tokens <= 8

    def models():
        assert [m.id for m in client.models.list()] == ["smollm2", "minilm", "smol-hermes"]
        assert client.models.retrieve("smollm2").id == "smollm2"

    def errors():
        try:
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
            raise AssertionError("no error")
        except openai.NotFoundError as e:
            assert e.code == "model_not_found"
        try:
            client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "x"}], temperature=5)
            raise AssertionError("no error")
        except openai.BadRequestError as e:
            assert e.param == "temperature"

    def tools():
        r = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Weather in Paris?"}],
                                           max_tokens=60, temperature=0, tools=WEATHER,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
        call = r.choices[0].message.tool_calls[0]
        assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
        import json
        assert isinstance(json.loads(call.function.arguments)["city"], str)

    def streamed_tools():
        s = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Weather?"}],
                                           max_tokens=60, stream=True, tools=WEATHER, tool_choice="required")
        names, pieces, ids, finish = [], [], [], None
        for chunk in s:
            for c in chunk.choices:
                for tc in c.delta.tool_calls or []:
                    if tc.function.name:
                        names.append(tc.function.name)
                    if tc.id:
                        ids.append(tc.id)
                    pieces.append(tc.function.arguments or "")
                finish = c.finish_reason or finish
        # As OpenAI streams a call: id and name once, then the arguments in pieces.
        assert names == ["get_weather"] and len(ids) == 1 and finish == "tool_calls"
        assert len([p for p in pieces if p]) >= 2, pieces
        assert isinstance(json.loads("".join(pieces)), dict)

    def logprobs():
        r = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Say yes"}],
                                           max_tokens=3, temperature=0, logprobs=True, top_logprobs=2)
        content = r.choices[0].logprobs.content
        assert content and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)

    def parse():
        # Greedy: at temperature 1 the constrained JSON string could run past any max_tokens.
        r = client.beta.chat.completions.parse(model="smollm2", messages=[{"role": "user", "content": "A cat"}],
                                               max_tokens=120, temperature=0, response_format=Cat)
        assert isinstance(r.choices[0].message.parsed, Cat) and r.choices[0].finish_reason == "stop"

    def cosine(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    def embeddings():
        reference = json.load(open(REFERENCE))["items"]
        texts = [item["text"] for item in reference]
        # The SDK asks for base64 by default and decodes it; floats must be identical.
        default = client.embeddings.create(model="minilm", input=texts)
        floats = client.embeddings.create(model="minilm", input=texts, encoding_format="float")
        assert [d.index for d in default.data] == list(range(len(texts)))
        assert default.model == "minilm" and default.usage.prompt_tokens == floats.usage.prompt_tokens > 0
        for d, f, item in zip(default.data, floats.data, reference):
            # JSON floats are float32 values printed shortest; as float32 they are equal.
            as32 = lambda v: struct.unpack(f"{len(v)}f", struct.pack(f"{len(v)}f", *v))
            assert as32(d.embedding) == as32(f.embedding), "base64 and float differ"
            assert len(d.embedding) == 384
            assert cosine(d.embedding, item["embedding"]) >= 0.999
        one = client.embeddings.create(model="minilm", input="The cat sits on the mat.")
        assert cosine(one.data[0].embedding, default.data[0].embedding) > 0.99999

    def langchain_style():
        # What LangChain's OpenAIEmbeddings sends with check_embedding_ctx_length=False:
        # chunks of plain strings, encoding_format float.
        r = client.embeddings.create(model="minilm", input=["doc one", "doc two", "doc three"],
                                     encoding_format="float")
        assert len(r.data) == 3 and all(len(d.embedding) == 384 for d in r.data)

    def embedding_errors():
        for kwargs, param in [(dict(model="smollm2", input="x"), "model"),
                              (dict(model="minilm", input="x", dimensions=64), "dimensions"),
                              (dict(model="minilm", input=["ok", ""]), "input[1]")]:
            try:
                client.embeddings.create(**kwargs)
                raise AssertionError(f"no error for {kwargs}")
            except openai.BadRequestError as e:
                assert e.param == param, (e.param, param)

    RESP_TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city.",
                   "parameters": WEATHER[0]["function"]["parameters"], "strict": True}]

    def responses_create():
        r = client.responses.create(model="smollm2", input="Say hi", instructions="Be brief.",
                                    max_output_tokens=12, temperature=0, metadata={"k": "v"})
        assert r.object == "response" and r.id.startswith("resp_") and r.model == "smollm2"
        assert r.status in ("completed", "incomplete") and r.output_text
        assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 12
        assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
        assert r.metadata == {"k": "v"} and r.instructions == "Be brief."
        if r.status == "incomplete":
            assert r.incomplete_details.reason == "max_output_tokens"

    def responses_stream():
        # The SDK's helper expects `response.completed`: room for the model to finish.
        with client.responses.stream(model="smollm2", input="Say hi.", max_output_tokens=200,
                                     temperature=0) as s:
            kinds = []
            text = ""
            for event in s:
                kinds.append(event.type)
                if event.type == "response.output_text.delta":
                    text += event.delta
            final = s.get_final_response()
        assert kinds[0] == "response.created" and kinds[1] == "response.in_progress", kinds
        assert kinds[-1] in ("response.completed", "response.incomplete"), kinds
        assert "response.output_item.added" in kinds and "response.output_text.done" in kinds
        assert text and final.output_text == text

    def responses_tool_loop():
        first = client.responses.create(model="smollm2", input="Weather in Paris?", tools=RESP_TOOLS,
                                        tool_choice={"type": "function", "name": "get_weather"},
                                        max_output_tokens=60, temperature=0)
        call = next(item for item in first.output if item.type == "function_call")
        assert call.name == "get_weather" and json.loads(call.arguments)["city"]
        second = client.responses.create(
            model="smollm2", previous_response_id=first.id, tools=RESP_TOOLS, tool_choice="none",
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 C and sunny"}],
            max_output_tokens=20, temperature=0)
        assert second.previous_response_id == first.id and second.output_text
        # The continued conversation was read: the prompt grew by the earlier turns.
        assert second.usage.input_tokens > first.usage.input_tokens - 60

    def responses_store():
        r = client.responses.create(model="smollm2", input="Hi", max_output_tokens=4)
        again = client.responses.retrieve(r.id)
        assert again.id == r.id and again.output_text == r.output_text
        deleted = client.responses.delete(r.id)
        try:
            client.responses.retrieve(r.id)
            raise AssertionError("still there")
        except openai.NotFoundError:
            pass
        unstored = client.responses.create(model="smollm2", input="Hi", max_output_tokens=4, store=False)
        try:
            client.responses.retrieve(unstored.id)
            raise AssertionError("stored without store")
        except openai.NotFoundError:
            pass
        try:
            client.responses.create(model="smollm2", input="Hi", previous_response_id="resp_nope")
            raise AssertionError("no error")
        except openai.NotFoundError as e:
            assert e.param == "previous_response_id"
        try:
            client.responses.create(model="smollm2", input="Hi", tools=[{"type": "web_search"}])
            raise AssertionError("no error")
        except openai.BadRequestError as e:
            assert e.param == "tools[0].type"

    def native_tools():
        # The model's own syntax (<tool_call> blocks) under the grammar, read back as calls.
        r = client.chat.completions.create(model="smol-hermes", messages=[{"role": "user", "content": "Weather in Paris?"}],
                                           max_tokens=80, temperature=0, tools=WEATHER, tool_choice="required",
                                           parallel_tool_calls=False)
        calls = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls" and len(calls) == 1, r
        assert calls[0].function.name == "get_weather" and isinstance(json.loads(calls[0].function.arguments)["city"], str)
        assert "<tool_call>" not in (r.choices[0].message.content or "")
        s = client.chat.completions.create(model="smol-hermes", messages=[{"role": "user", "content": "Weather?"}],
                                           max_tokens=80, temperature=0, tools=WEATHER, tool_choice="required",
                                           parallel_tool_calls=False, stream=True)
        names, pieces = [], []
        for chunk in s:
            for c in chunk.choices:
                for tc in c.delta.tool_calls or []:
                    names += [tc.function.name] if tc.function.name else []
                    pieces.append(tc.function.arguments or "")
        assert names == ["get_weather"] and len([p for p in pieces if p]) >= 2, pieces
        # A second turn with the call and its result, rendered by the template.
        again = client.chat.completions.create(
            model="smol-hermes", max_tokens=10, temperature=0, tools=WEATHER,
            messages=[{"role": "user", "content": "Weather in Paris?"},
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"id": calls[0].id, "type": "function",
                           "function": {"name": "get_weather", "arguments": calls[0].function.arguments}}]},
                      {"role": "tool", "tool_call_id": calls[0].id, "content": "18 C"}])
        assert again.choices[0].finish_reason in ("stop", "length", "tool_calls")
        resp = client.responses.create(model="smol-hermes", input="Weather in Oslo?", tools=RESP_TOOLS,
                                       tool_choice="required", parallel_tool_calls=False,
                                       max_output_tokens=80, temperature=0)
        call = next(item for item in resp.output if item.type == "function_call")
        assert call.name == "get_weather" and json.loads(call.arguments)["city"]

    def responses_structured():
        r = client.responses.create(model="smollm2", input="A cat", max_output_tokens=80, temperature=0,
                                    text={"format": {"type": "json_schema", "name": "cat", "strict": True, "schema": {
                                        "type": "object", "properties": {"name": {"type": "string"}},
                                        "required": ["name"], "additionalProperties": False}}})
        assert isinstance(json.loads(r.output_text)["name"], str)

    try:
        for name, fn in [("chat", chat), ("stream with usage", stream), ("completions", completions),
                         ("models", models), ("typed errors", errors), ("named tool call", tools),
                         ("streamed tool call", streamed_tools), ("logprobs", logprobs),
                         ("structured output parse", parse), ("embeddings (base64 and float)", embeddings),
                         ("embeddings as LangChain sends them", langchain_style),
                         ("embedding errors", embedding_errors), ("responses.create", responses_create),
                         ("responses.stream", responses_stream),
                         ("responses tool loop with previous_response_id", responses_tool_loop),
                         ("responses store: retrieve, delete, 404s, built-in tools refused", responses_store),
                         ("responses structured output", responses_structured),
                         ("native tool calls (Hermes template): chat, stream, history, responses", native_tools)]:
            check(name, fn)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        os.unlink(config)
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
