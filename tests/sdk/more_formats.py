"""Drives the official Gemini, Azure OpenAI and Bedrock clients through tracegate.

Usage: more_formats.py PROXY_HTTPS_URL CA_FILE TRACEPARENT TEAM_KEY

Every client talks HTTPS to tracegate (trusting CA_FILE): google-genai (generate, stream, count tokens, embed) on /gemini, openai.AzureOpenAI (create,
stream) on /azure, and boto3's bedrock-runtime (converse, converse_stream, invoke_model) on
/bedrock with the team key as AWS_BEARER_TOKEN_BEDROCK (boto3 sends bearer tokens
only over HTTPS), plus one converse on /bedrock-signed, whose upstream records what it got for
the signature check; and one client that signs with SigV4 itself, which tracegate refuses.
Every call carries TRACEPARENT, so all land in one trace. Prints one JSON object of what the
clients saw, for the Rust test to compare with the spans.
"""

import json
import os
import sys

proxy, ca_file, traceparent, team_key = sys.argv[1:5]
seen = {}

# --- Gemini --------------------------------------------------------------------------------
from google import genai
from google.genai import types

gemini = genai.Client(
    api_key=team_key,
    http_options=types.HttpOptions(
        base_url=f"{proxy}/gemini",
        headers={"traceparent": traceparent},
        client_args={"verify": ca_file},
    ),
)
reply = gemini.models.generate_content(model="gemini-2.5-flash", contents="Say hello to the SDK test")
seen["gemini_generate"] = {
    "text": reply.text,
    "input_tokens": reply.usage_metadata.prompt_token_count,
    "output_tokens": reply.usage_metadata.candidates_token_count + (reply.usage_metadata.thoughts_token_count or 0),
    "upstream_saw": json.loads((reply.sdk_http_response.headers or {}).get("x-mock-request-headers", "{}")),
}
text, usage = "", None
for chunk in gemini.models.generate_content_stream(model="gemini-2.5-flash", contents="Stream to the SDK test"):
    text += chunk.text or ""
    if chunk.usage_metadata and chunk.usage_metadata.candidates_token_count:
        usage = chunk.usage_metadata
seen["gemini_stream"] = {
    "text": text,
    "input_tokens": usage.prompt_token_count,
    "output_tokens": usage.candidates_token_count + (usage.thoughts_token_count or 0),
}
counted = gemini.models.count_tokens(model="gemini-2.5-flash", contents="Count these words")
seen["gemini_count"] = {"total_tokens": counted.total_tokens}
embedded = gemini.models.embed_content(model="gemini-embedding-001", contents="Embed this sentence")
seen["gemini_embed"] = {"dimensions": len(embedded.embeddings[0].values)}

# --- Azure OpenAI --------------------------------------------------------------------------
import openai

azure = openai.AzureOpenAI(
    http_client=openai.DefaultHttpxClient(verify=ca_file),
    azure_endpoint=f"{proxy}/azure",
    api_version="2024-10-21",
    api_key=team_key,
    default_headers={"traceparent": traceparent},
    max_retries=0,
)
raw = azure.chat.completions.with_raw_response.create(
    model="prod-mini", messages=[{"role": "user", "content": "Hello from the Azure SDK test"}]
)
chat = raw.parse()
seen["azure_create"] = {
    "text": chat.choices[0].message.content,
    "model": chat.model,
    "input_tokens": chat.usage.prompt_tokens,
    "output_tokens": chat.usage.completion_tokens,
    "upstream_saw": json.loads(raw.headers.get("x-mock-request-headers", "{}")),
}
text, usage = "", None
for chunk in azure.chat.completions.create(
    model="prod-mini",
    messages=[{"role": "user", "content": "Stream to the Azure SDK test"}],
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage
seen["azure_stream"] = {"text": text, "input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}

# --- Bedrock -------------------------------------------------------------------------------
import boto3
import botocore.config
import botocore.exceptions

config = botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"})
os.environ.pop("AWS_BEARER_TOKEN_BEDROCK", None)


def with_traceparent(client):
    def add(request, **_):
        request.headers["traceparent"] = traceparent

    client.meta.events.register("before-send.bedrock-runtime.*", add)
    return client


# A client that signs with SigV4 itself (signed for tracegate's host): refused with advice.
signed = with_traceparent(
    boto3.client(
        "bedrock-runtime",
        endpoint_url=f"{proxy}/bedrock",
        region_name="us-east-1",
        aws_access_key_id="AKIDCLIENTSIDE",
        aws_secret_access_key="client-side-secret",
        verify=ca_file,
        config=config,
    )
)
try:
    signed.converse(modelId="anthropic.claude-haiku-4-5-20251001-v1:0", messages=[{"role": "user", "content": [{"text": "hi"}]}])
    seen["client_signed"] = {"refused": False}
except botocore.exceptions.ClientError as e:
    seen["client_signed"] = {
        "refused": True,
        "code": e.response["Error"]["Code"],
        "message": e.response["Error"]["Message"],
        "status": e.response["ResponseMetadata"]["HTTPStatusCode"],
    }

os.environ["AWS_BEARER_TOKEN_BEDROCK"] = team_key


def bedrock(prefix):
    return with_traceparent(
        boto3.client(
            "bedrock-runtime",
            endpoint_url=f"{proxy}/{prefix}",
            region_name="us-east-1",
            verify=ca_file,
            config=config,
        )
    )


br = bedrock("bedrock")
model = "anthropic.claude-haiku-4-5-20251001-v1:0"
messages = [{"role": "user", "content": [{"text": "Say hello to the boto3 test"}]}]
answer = br.converse(modelId=model, messages=messages, inferenceConfig={"maxTokens": 64})
seen["bedrock_converse"] = {
    "text": "".join(b.get("text", "") for b in answer["output"]["message"]["content"]),
    "input_tokens": answer["usage"]["inputTokens"],
    "output_tokens": answer["usage"]["outputTokens"],
    "upstream_saw": json.loads(answer["ResponseMetadata"]["HTTPHeaders"].get("x-mock-request-headers", "{}")),
}
text, usage, events = "", None, 0
for event in br.converse_stream(modelId=model, messages=messages, inferenceConfig={"maxTokens": 64})["stream"]:
    events += 1
    if "contentBlockDelta" in event:
        text += event["contentBlockDelta"]["delta"].get("text", "")
    if "metadata" in event:
        usage = event["metadata"]["usage"]
seen["bedrock_stream"] = {"text": text, "events": events, "input_tokens": usage["inputTokens"], "output_tokens": usage["outputTokens"]}
invoked = br.invoke_model(
    modelId=model,
    body=json.dumps(
        {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": [{"role": "user", "content": "Invoke from the boto3 test"}]}
    ),
)
body = json.loads(invoked["body"].read())
headers = invoked["ResponseMetadata"]["HTTPHeaders"]
seen["bedrock_invoke"] = {
    "text": "".join(b.get("text", "") for b in body["content"]),
    "input_tokens": body["usage"]["input_tokens"],
    "output_tokens": body["usage"]["output_tokens"],
    "header_input_tokens": int(headers["x-amzn-bedrock-input-token-count"]),
}
# The route whose upstream records the request, to check tracegate's SigV4 signature.
answer = bedrock("bedrock-signed").converse(modelId=model, messages=messages)
seen["bedrock_signed"] = {"text": answer["output"]["message"]["content"][0]["text"]}

print(json.dumps(seen))
