"""Drives poolgate's gateway with the official openai Python SDK, as an application would.

Configuration comes from the environment (keys stay out of argv):
  POOLGATE_BASE_URL   the gateway's OpenAI base URL, http://HOST:PORT/v1
  POOLGATE_KEYS       JSON object: route label -> platform key
  POOLGATE_MODEL      the model to ask for

For every label it makes four calls (chat completions and responses, each streamed and not)
with a prompt unique to the call, and prints one JSON document listing what came back: the
text, the usage and the gateway's request id (`x-request-id`). The Rust test judges the
results; this script fails (non-zero exit, traceback) only when the SDK itself raises.
"""

import json
import os
import sys

import openai


def chat(client, model, prompt):
    resp = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}]
    )
    u = resp.usage
    return {
        "text": resp.choices[0].message.content,
        "finish_reason": resp.choices[0].finish_reason,
        "input_tokens": u.prompt_tokens if u else None,
        "output_tokens": u.completion_tokens if u else None,
        "total_tokens": u.total_tokens if u else None,
        "request_id": resp._request_id,
    }


def chat_stream(client, model, prompt):
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, chunks = [], None, None, 0
    with stream:
        for chunk in stream:
            chunks += 1
            for choice in chunk.choices:
                if choice.delta and choice.delta.content:
                    text.append(choice.delta.content)
                if choice.finish_reason:
                    finish = choice.finish_reason
            if chunk.usage:
                usage = chunk.usage
        request_id = stream.response.headers.get("x-request-id")
    return {
        "text": "".join(text),
        "finish_reason": finish,
        "chunks": chunks,
        "input_tokens": usage.prompt_tokens if usage else None,
        "output_tokens": usage.completion_tokens if usage else None,
        "total_tokens": usage.total_tokens if usage else None,
        "request_id": request_id,
    }


def responses(client, model, prompt):
    resp = client.responses.create(model=model, input=prompt)
    u = resp.usage
    return {
        "text": resp.output_text,
        "status": resp.status,
        "input_tokens": u.input_tokens if u else None,
        "output_tokens": u.output_tokens if u else None,
        "total_tokens": u.total_tokens if u else None,
        "request_id": resp._request_id,
    }


def responses_stream(client, model, prompt):
    stream = client.responses.create(model=model, input=prompt, stream=True)
    deltas, types, final = [], [], None
    with stream:
        for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                final = event.response
        request_id = stream.response.headers.get("x-request-id")
    u = final.usage if final else None
    return {
        "text": "".join(deltas),
        "completed_text": final.output_text if final else None,
        "status": final.status if final else None,
        "event_types": types,
        "input_tokens": u.input_tokens if u else None,
        "output_tokens": u.output_tokens if u else None,
        "total_tokens": u.total_tokens if u else None,
        "request_id": request_id,
    }


CALLS = [
    ("chat", False, chat),
    ("chat", True, chat_stream),
    ("responses", False, responses),
    ("responses", True, responses_stream),
]


def main():
    base_url = os.environ["POOLGATE_BASE_URL"]
    keys = json.loads(os.environ["POOLGATE_KEYS"])
    model = os.environ["POOLGATE_MODEL"]
    results = []
    for label, key in sorted(keys.items()):
        # No retries: each SDK call must be exactly one gateway request.
        client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)
        for api, stream, fn in CALLS:
            prompt = f"hello from the openai sdk via {label} {api} {'stream' if stream else 'plain'}"
            out = fn(client, model, prompt)
            out.update({"label": label, "api": api, "stream": stream, "prompt": prompt})
            results.append(out)
    json.dump({"openai_version": openai.__version__, "results": results}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
