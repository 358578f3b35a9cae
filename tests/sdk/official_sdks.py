"""Drives the official OpenAI and Anthropic Python SDKs through tracegate.

Usage: official_sdks.py PROXY_URL TRACEPARENT

Every call carries the same traceparent (as an app's tracing would), so all of them land in
one trace. Prints one JSON object: what the SDKs saw (text, usage, tracegate ids), for the
Rust test to compare with the spans tracegate recorded.
"""

import json
import sys

import anthropic
import openai

proxy, traceparent = sys.argv[1], sys.argv[2]
headers = {"traceparent": traceparent}
seen = {}

oai = openai.OpenAI(base_url=f"{proxy}/openai/v1", api_key="sk-test-not-a-real-key", default_headers=headers, max_retries=0)

raw = oai.chat.completions.with_raw_response.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello from the SDK test"}]
)
chat = raw.parse()
seen["chat"] = {
    "text": chat.choices[0].message.content,
    "input_tokens": chat.usage.prompt_tokens,
    "output_tokens": chat.usage.completion_tokens,
    "trace_id": raw.headers["x-tracegate-trace-id"],
    "span_id": raw.headers["x-tracegate-span-id"],
}

stream = oai.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Stream to the SDK test"}],
    stream=True,
    stream_options={"include_usage": True},
)
text, usage = "", None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage
seen["chat_stream"] = {"text": text, "input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}

emb = oai.embeddings.create(model="text-embedding-3-small", input=["one two three", "four"])
seen["embeddings"] = {"count": len(emb.data), "input_tokens": emb.usage.prompt_tokens}

resp = oai.responses.create(model="gpt-4.1-mini", input="Respond to the SDK test")
seen["responses"] = {"text": resp.output_text, "input_tokens": resp.usage.input_tokens, "output_tokens": resp.usage.output_tokens}

try:
    oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], extra_headers={"x-mock-status": "429"})
    seen["rate_limited"] = False
except openai.RateLimitError:
    seen["rate_limited"] = True

ant = anthropic.Anthropic(base_url=f"{proxy}/anthropic", api_key="sk-ant-test-not-a-real-key", default_headers=headers, max_retries=0)
with ant.messages.stream(
    model="claude-3-5-haiku-latest", max_tokens=64, messages=[{"role": "user", "content": "Stream to the SDK test"}]
) as s:
    streamed = "".join(s.text_stream)
    final = s.get_final_message()
seen["messages_stream"] = {"text": streamed, "input_tokens": final.usage.input_tokens, "output_tokens": final.usage.output_tokens}

print(json.dumps(seen))
