#!/usr/bin/env python3
"""Writes the JSON Schemas the renderers' unit tests validate against (tests/schemas/).

The published API definitions, as the official SDKs carry them: `openai` and `anthropic`
on PyPI are generated from OpenAI's and Anthropic's OpenAPI specifications, and each
response or event type in them is a pydantic model. This script asks pydantic for each
type's JSON Schema (draft 2020-12) and writes it with the SDK's name and version, so the
vendored files say exactly what they were made from. Run it with the suite's virtual
environment (scripts/setup.sh) after changing the SDK versions, and commit the result:

    ~/.cache/llamagate/venv/bin/python scripts/api-schemas.py
"""

import json
import pathlib

import anthropic
import openai
from anthropic import types as a
from openai import types as o
from openai.types import chat, responses
from pydantic import TypeAdapter

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "schemas"

TYPES = {
    ("openai", openai.__version__): {
        "chat_completion": chat.ChatCompletion,
        "chat_completion_chunk": chat.ChatCompletionChunk,
        "completion": o.Completion,
        "create_embedding_response": o.CreateEmbeddingResponse,
        "error_object": o.ErrorObject,
        "response": responses.Response,
        "response_stream_event": responses.ResponseStreamEvent,
    },
    ("anthropic", anthropic.__version__): {
        "message": a.Message,
        "raw_message_stream_event": a.RawMessageStreamEvent,
        "message_tokens_count": a.MessageTokensCount,
        "error_response": a.ErrorResponse,
    },
}


def main() -> None:
    for (sdk, version), types in TYPES.items():
        folder = OUT / sdk
        folder.mkdir(parents=True, exist_ok=True)
        for name, kind in types.items():
            schema = TypeAdapter(kind).json_schema()
            schema["$comment"] = (
                f"{kind.__module__}.{getattr(kind, '__name__', name)} from the official "
                f"`{sdk}` Python SDK {version} (PyPI), generated from the published OpenAPI "
                "specification; written by scripts/api-schemas.py"
            )
            path = folder / f"{name}.json"
            path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
            print(f"{path.relative_to(OUT.parent.parent)}: {sdk} {version}")


if __name__ == "__main__":
    main()
