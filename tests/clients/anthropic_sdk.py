"""Drives poolgate's gateway with the official anthropic Python SDK, as an application would.

Configuration comes from the environment (keys stay out of argv):
  POOLGATE_BASE_URL   the gateway's root URL, http://HOST:PORT (the SDK appends /v1/messages)
  POOLGATE_KEY        the platform key
  POOLGATE_MODEL      the Claude model name to ask for

It makes, with a prompt unique to each call: a plain message (key as `api_key`, sent as
`x-api-key`), a streamed message through the SDK's MessageStream helper (key as
`auth_token`, sent as `Authorization: Bearer`), a raw event stream, a count_tokens call, and a
tool round trip (tool_use, then tool_result). It prints one JSON document with what came back;
the Rust test judges it. The script fails (non-zero exit, traceback) only when the SDK raises.
"""

import json
import os
import sys

import anthropic

TOOL = {
    "name": "lookup_weather",
    "description": "Look up the weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def usage(u):
    return {
        "input_tokens": u.input_tokens if u else None,
        "output_tokens": u.output_tokens if u else None,
    }


def text_of(message):
    return "".join(b.text for b in message.content if b.type == "text")


def plain(client, model, prompt):
    raw = client.messages.with_raw_response.create(
        model=model,
        max_tokens=256,
        system="Be brief.",
        messages=[{"role": "user", "content": prompt}],
        metadata={"user_id": "sdk-user"},
    )
    msg = raw.parse()
    return {
        "text": text_of(msg),
        "model": msg.model,
        "stop_reason": msg.stop_reason,
        "id": msg.id,
        **usage(msg.usage),
        "request_id": raw.headers.get("x-request-id"),
    }


def helper_stream(client, model, prompt):
    deltas = []
    with client.messages.stream(
        model=model,
        max_tokens=256,
        messages=[{"role": "user", "content": prompt}],
        metadata={"user_id": "sdk-user"},
    ) as stream:
        for text in stream.text_stream:
            deltas.append(text)
        final = stream.get_final_message()
        request_id = stream.response.headers.get("x-request-id")
    return {
        "text": "".join(deltas),
        "final_text": text_of(final),
        "model": final.model,
        "stop_reason": final.stop_reason,
        "deltas": len(deltas),
        **usage(final.usage),
        "request_id": request_id,
    }


def raw_stream(client, model, prompt):
    stream = client.messages.create(
        model=model,
        max_tokens=256,
        messages=[{"role": "user", "content": prompt}],
        stream=True,
    )
    types, text, stop_reason, output_tokens = [], [], None, None
    with stream:
        for event in stream:
            types.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text.append(event.delta.text)
            elif event.type == "message_delta":
                stop_reason = event.delta.stop_reason
                output_tokens = event.usage.output_tokens
        request_id = stream.response.headers.get("x-request-id")
    return {
        "text": "".join(text),
        "event_types": types,
        "stop_reason": stop_reason,
        "output_tokens": output_tokens,
        "request_id": request_id,
    }


def count(client, model, prompt):
    raw = client.messages.with_raw_response.count_tokens(
        model=model, messages=[{"role": "user", "content": prompt}]
    )
    return {
        "input_tokens": raw.parse().input_tokens,
        "request_id": raw.headers.get("x-request-id"),
    }


def tools(client, model, prompt):
    messages = [{"role": "user", "content": f"please call the tool: {prompt}"}]
    first = client.messages.create(model=model, max_tokens=256, tools=[TOOL], messages=messages)
    calls = [b for b in first.content if b.type == "tool_use"]
    out = {
        "first_stop_reason": first.stop_reason,
        "tool_names": [c.name for c in calls],
        "tool_inputs": [c.input for c in calls],
    }
    if not calls:
        return out
    call = calls[0]
    messages.append({"role": "assistant", "content": [b.model_dump() for b in first.content]})
    messages.append(
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": prompt}],
        }
    )
    second = client.messages.create(model=model, max_tokens=256, tools=[TOOL], messages=messages)
    out.update({"text": text_of(second), "stop_reason": second.stop_reason})
    return out


def main():
    base_url = os.environ["POOLGATE_BASE_URL"]
    key = os.environ["POOLGATE_KEY"]
    model = os.environ["POOLGATE_MODEL"]
    # No retries: each SDK call must be exactly one gateway request.
    by_api_key = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0, timeout=30)
    by_bearer = anthropic.Anthropic(
        base_url=base_url, api_key=None, auth_token=key, max_retries=0, timeout=30
    )
    results = {}
    for name, client, fn in [
        ("plain", by_api_key, plain),
        ("helper_stream", by_bearer, helper_stream),
        ("raw_stream", by_api_key, raw_stream),
        ("count_tokens", by_bearer, count),
        ("tools", by_api_key, tools),
    ]:
        prompt = f"hello from the anthropic sdk {name}"
        out = fn(client, model, prompt)
        out["prompt"] = prompt
        results[name] = out
    json.dump(
        {
            "anthropic_version": anthropic.__version__,
            # The anthropic-version header the SDK sends with every request.
            "api_version": by_api_key.default_headers.get("anthropic-version"),
            "results": results,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
