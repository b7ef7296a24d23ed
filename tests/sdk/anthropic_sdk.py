"""The official Anthropic Python SDK against a real llamagate with the real model.

Started by scripts/test.sh: runs `llamagate serve` (SmolLM2 on llama.cpp, an API key) on
a free port and drives it through `anthropic.Anthropic(base_url=...)`: a message, a
stream (text deltas and the final message), a tool-use round trip (tool_use block, then
a tool_result turn answered in text), count_tokens, and typed errors in Anthropic's
envelope (bad request naming the field, unknown model, wrong key). Prints
"N passed, M failed".
"""

import json
import os
import sys
import traceback

import anthropic

import server

KEY = "sdk-test-key"
# The 2.x SDK has no `temperature` argument; the server still takes it (older clients send
# it): greedy decoding keeps the tool and JSON checks deterministic.
GREEDY = {"temperature": 0}

WEATHER = [{"name": "get_weather", "description": "Weather in a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"], "additionalProperties": False}}]


def start_server():
    return server.start_server(
        f'[auth]\napi_keys = ["{KEY}"]\n'
        f'[[models]]\nname = "smollm2"\nsource = "{server.MODEL_FILE}"\nengine = "llama.cpp"\npinned = true\n'
        + server.hermes_model("smol-hermes"))



def main():
    proc, config, base = start_server()
    # The SDK sends the key as `x-api-key` and appends /v1/messages to the base URL.
    client = anthropic.Anthropic(base_url=base, api_key=KEY, max_retries=0)
    results = []

    def check(name, fn):
        try:
            fn()
            results.append(True)
            print(f"ok   {name}")
        except Exception:
            results.append(False)
            print(f"FAIL {name}\n{traceback.format_exc()}")

    def create():
        m = client.messages.create(model="smollm2", max_tokens=16,
                                   system="You are brief.", messages=[{"role": "user", "content": "Say hi"}])
        assert m.type == "message" and m.role == "assistant" and m.model == "smollm2"
        assert m.id.startswith("msg_")
        assert m.content and m.content[0].type == "text" and m.content[0].text
        assert m.stop_reason in ("end_turn", "max_tokens")
        assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 16

    def stream():
        with client.messages.stream(model="smollm2", max_tokens=12,
                                    messages=[{"role": "user", "content": "Count to five."}]) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        assert text and final.content[0].text == text
        assert final.stop_reason in ("end_turn", "max_tokens") and final.usage.output_tokens > 0

    def raw_stream_events():
        kinds = [e.type for e in client.messages.create(
            model="smollm2", max_tokens=4, stream=True, messages=[{"role": "user", "content": "Hi"}])]
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
        assert "content_block_delta" in kinds and "message_delta" in kinds, kinds

    def tool_round_trip():
        first = client.messages.create(model="smollm2", max_tokens=120, tools=WEATHER, extra_body=GREEDY,
                                       tool_choice={"type": "tool", "name": "get_weather"},
                                       messages=[{"role": "user", "content": "Weather in Paris?"}])
        assert first.stop_reason == "tool_use", first
        call = next(b for b in first.content if b.type == "tool_use")
        assert call.name == "get_weather" and isinstance(call.input, dict) and "city" in call.input
        assert call.id.startswith("toolu_")
        second = client.messages.create(
            model="smollm2", max_tokens=20, tools=WEATHER, tool_choice={"type": "none"},
            messages=[{"role": "user", "content": "Weather in Paris?"},
                      {"role": "assistant", "content": first.content},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                    "content": "18 C and sunny"}]}])
        assert second.content[0].type == "text" and second.content[0].text

    def streamed_tool_use():
        with client.messages.stream(model="smollm2", max_tokens=120, tools=WEATHER, extra_body=GREEDY,
                                    tool_choice={"type": "any"},
                                    messages=[{"role": "user", "content": "Weather in Rome?"}]) as s:
            final = s.get_final_message()
        call = next(b for b in final.content if b.type == "tool_use")
        assert final.stop_reason == "tool_use" and call.name == "get_weather" and "city" in call.input

    def native_tool_use():
        # The model's own <tool_call> syntax, read back as a tool_use block; then the result.
        first = client.messages.create(model="smol-hermes", max_tokens=120, tools=WEATHER, extra_body=GREEDY,
                                       tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                       messages=[{"role": "user", "content": "Weather in Paris?"}])
        assert first.stop_reason == "tool_use", first
        calls = [b for b in first.content if b.type == "tool_use"]
        assert len(calls) == 1 and calls[0].name == "get_weather" and "city" in calls[0].input
        second = client.messages.create(
            model="smol-hermes", max_tokens=10, tools=WEATHER, extra_body=GREEDY,
            messages=[{"role": "user", "content": "Weather in Paris?"},
                      {"role": "assistant", "content": first.content},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id,
                                                    "content": "18 C and sunny"}]}])
        assert second.stop_reason in ("end_turn", "max_tokens", "tool_use"), second

    def structured_output():
        m = client.messages.create(model="smollm2", max_tokens=120, messages=[{"role": "user", "content": "A cat"}],
                                   extra_body=GREEDY,
                                   output_config={"format": {"type": "json_schema", "schema": {
                                       "type": "object", "properties": {"name": {"type": "string"}},
                                       "required": ["name"], "additionalProperties": False}}})
        assert m.stop_reason == "end_turn", m
        assert isinstance(json.loads(m.content[0].text)["name"], str)

    def count_tokens():
        short = client.messages.count_tokens(model="smollm2", messages=[{"role": "user", "content": "Hi"}])
        longer = client.messages.count_tokens(model="smollm2", messages=[{"role": "user", "content": "Hi " * 50}])
        assert 0 < short.input_tokens < longer.input_tokens

    def errors():
        try:
            client.messages.create(model="smollm2", max_tokens=5,
                                   messages=[{"role": "user", "content": [{"type": "image", "source": {
                                       "type": "base64", "media_type": "image/png", "data": "AAAA"}}]}])
            raise AssertionError("no error")
        except anthropic.BadRequestError as e:
            assert e.body["type"] == "error" and e.body["error"]["type"] == "invalid_request_error"
            assert "messages[0].content[0].type" in e.body["error"]["message"]
        try:
            client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
            raise AssertionError("no error")
        except anthropic.NotFoundError as e:
            assert e.body["error"]["type"] == "not_found_error"
        wrong = anthropic.Anthropic(base_url=base, api_key="wrong", max_retries=0)
        try:
            wrong.messages.create(model="smollm2", max_tokens=5, messages=[{"role": "user", "content": "x"}])
            raise AssertionError("no error")
        except anthropic.AuthenticationError as e:
            assert e.body["error"]["type"] == "authentication_error"

    try:
        for name, fn in [("message", create), ("stream", stream), ("raw stream events", raw_stream_events),
                         ("tool use round trip", tool_round_trip), ("streamed tool use", streamed_tool_use),
                         ("native tool use (Hermes template) and its result", native_tool_use),
                         ("structured output (output_config.format)", structured_output),
                         ("count_tokens", count_tokens), ("typed errors", errors)]:
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
