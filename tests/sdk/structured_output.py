"""Drives the OpenAI Python SDK's structured-output helpers through tracegate to mock-llm.

Usage: structured_output.py PROXY_URL

`chat.completions.parse`, `responses.parse` and their streaming twins (`chat.completions.stream`,
`responses.stream`) with a Pydantic model as the format: the SDK turns the model into a strict
JSON Schema, sends it as `response_format` / `text.format`, and validates the answer against
the model. Prints one JSON object: what each helper parsed (as plain JSON, with the Python type
name of every field), plus the reported usage, for the Rust test to check.
"""

import enum
import json
import sys
from typing import Literal, Optional

import openai
from pydantic import BaseModel

proxy = sys.argv[1]


class Priority(str, enum.Enum):
    LOW = "low"
    HIGH = "high"


class Address(BaseModel):
    street: str
    city: str


class Ticket(BaseModel):
    title: str
    count: int
    score: float
    urgent: bool
    priority: Priority
    kind: Literal["bug", "feature"]
    tags: list[str]
    address: Address
    history: list[Address]
    assignee: Optional[str]


def seen(parsed, usage_in, usage_out):
    """The parsed object as JSON, the Python type of each field, and the usage."""
    if parsed is None:
        return None
    return {
        "value": json.loads(parsed.model_dump_json()),
        "types": {name: type(getattr(parsed, name)).__name__ for name in Ticket.model_fields},
        "address_type": type(parsed.address).__name__,
        "input_tokens": usage_in,
        "output_tokens": usage_out,
    }


oai = openai.OpenAI(base_url=f"{proxy}/openai/v1", api_key="sk-test-not-a-real-key", max_retries=0)
messages = [{"role": "user", "content": "File a ticket"}]
out = {}

chat = oai.chat.completions.parse(model="gpt-4o-mini", messages=messages, response_format=Ticket)
out["chat"] = seen(chat.choices[0].message.parsed, chat.usage.prompt_tokens, chat.usage.completion_tokens)
out["chat"]["content"] = chat.choices[0].message.content

with oai.chat.completions.stream(
    model="gpt-4o-mini", messages=messages, response_format=Ticket, stream_options={"include_usage": True}
) as stream:
    # The first chunk's empty content (as OpenAI sends it) is a delta too: count the others.
    chunks = sum(1 for event in stream if event.type == "content.delta" and event.delta)
    final = stream.get_final_completion()
out["chat_stream"] = seen(final.choices[0].message.parsed, final.usage.prompt_tokens, final.usage.completion_tokens)
out["chat_stream"]["chunks"] = chunks
out["chat_stream"]["content"] = final.choices[0].message.content

resp = oai.responses.parse(model="gpt-4.1-mini", input="File a ticket", text_format=Ticket)
out["responses"] = seen(resp.output_parsed, resp.usage.input_tokens, resp.usage.output_tokens)

with oai.responses.stream(model="gpt-4.1-mini", input="File a ticket", text_format=Ticket) as stream:
    deltas = sum(1 for event in stream if event.type == "response.output_text.delta")
    final = stream.get_final_response()
out["responses_stream"] = seen(final.output_parsed, final.usage.input_tokens, final.usage.output_tokens)
out["responses_stream"]["chunks"] = deltas

json_mode = oai.chat.completions.create(model="gpt-4o-mini", messages=messages, response_format={"type": "json_object"})
out["json_object"] = json.loads(json_mode.choices[0].message.content)

print(json.dumps(out))
