"""An application instrumented with the real OpenTelemetry Python SDK, using tracegate both
as its OTLP collector and as its LLM proxy.

Usage: otel_app.py ADMIN_URL PROXY_URL

It opens an "agent step" span, calls the OpenAI API through the proxy inside it (the W3C
traceparent is injected by OpenTelemetry's propagator), and exports its own spans to
ADMIN_URL/v1/traces with the OTLP/HTTP protobuf exporter. Prints the ids as JSON.
"""

import json
import sys

import openai
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

admin, proxy = sys.argv[1], sys.argv[2]
provider = TracerProvider(resource=Resource.create({"service.name": "agent-app"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{admin}/v1/traces")))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("agent")

client = openai.OpenAI(base_url=f"{proxy}/openai/v1", api_key="sk-test-not-a-real-key", max_retries=0)
with tracer.start_as_current_span("agent step") as step:
    step.set_attribute("agent.goal", "say hello")
    with tracer.start_as_current_span("retrieve documents"):
        pass
    headers = {}
    propagate.inject(headers)
    reply = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}], extra_headers=headers
    )
    context = step.get_span_context()
provider.force_flush()
print(json.dumps({
    "trace_id": format(context.trace_id, "032x"),
    "step_span_id": format(context.span_id, "016x"),
    "proxy_trace_id": reply.headers["x-tracegate-trace-id"],
    "proxy_span_id": reply.headers["x-tracegate-span-id"],
}))
