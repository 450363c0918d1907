"""Drives `airllama api` with the official `openai` client (tests/api_server.rs runs it).

usage: client.py BASE_URL SERVER_LOG EXPECTED_JSON

EXPECTED_JSON holds what `airllama inference` printed for the same prompts at temperature 0
(see api_server.rs), the model id, the context length and the server's --queue. Every check
prints one line; the first failing one raises (exit status 1) with what it saw. Nothing here
is timed: waits poll /health or the server log and end only when the state is reached.
"""
import http.client
import json
import socket
import sys
import threading
import time
import urllib.parse

import openai

BASE, LOG, EXPECTED = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
URL = urllib.parse.urlparse(BASE)
HOST, PORT = URL.hostname, URL.port
MODEL = EXPECTED["model_id"]
# No retries: a 503 must reach the test, not be retried away.
client = openai.OpenAI(base_url=BASE + "/v1", api_key="unused", max_retries=0, timeout=600)
checks = 0


def check(name, ok, detail=""):
    global checks
    if not ok:
        raise AssertionError(f"{name}: {detail}")
    checks += 1
    print(f"ok {checks:2}: {name}" + (f" ({detail})" if detail else ""), flush=True)


def raw(method, path, body=None, headers=None):
    """One request over a fresh connection; returns (status, parsed JSON or text)."""
    conn = http.client.HTTPConnection(HOST, PORT, timeout=600)
    conn.request(method, path, body=body, headers=headers or {})
    res = conn.getresponse()
    data = res.read()
    conn.close()
    try:
        return res.status, json.loads(data)
    except ValueError:
        return res.status, data.decode("utf-8", "replace")


def log_lines():
    with open(LOG, encoding="utf-8", errors="replace") as f:
        return f.read().splitlines()


def wait_for(what, predicate):
    """Polls until predicate() is true. The limit only turns a state that never comes into a
    failure naming it instead of a hung CI run; it says nothing about speed."""
    deadline = time.monotonic() + 600
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after 600 s")
        time.sleep(0.05)


def health():
    status, body = raw("GET", "/health")
    assert status == 200, (status, body)
    return body


def chat(messages, **kw):
    return client.chat.completions.create(model=MODEL, messages=messages, **kw)


def completion(prompt, **kw):
    return client.completions.create(model=MODEL, prompt=prompt, **kw)


# --- the model list and the health check
models = client.models.list().data
check("GET /v1/models lists the loaded model", [m.id for m in models] == [MODEL], str([m.id for m in models]))
h = health()
check("GET /health", h["status"] == "ok" and h["queued"] == 0, json.dumps(h))

# --- temperature 0 gives airllama inference's text (these run first: nothing cached yet)
exp = EXPECTED["completion"]
r = completion(exp["prompt"], max_tokens=exp["max_tokens"], temperature=0, seed=1)
text = r.choices[0].text
check("completion = airllama inference", len(text) > 10 and exp["text"].startswith(text),
      f"{text!r} vs inference {exp['text']!r}")
check("completion usage", r.usage.prompt_tokens == exp["prompt_tokens"]
      and r.usage.completion_tokens == exp["max_tokens"] and r.choices[0].finish_reason == "length",
      f"{r.usage}, {r.choices[0].finish_reason}")

exp = EXPECTED["chat"]
question = [{"role": "user", "content": exp["question"]}]
r = chat(question, max_tokens=exp["max_tokens"], temperature=0)
answer = r.choices[0].message.content
check("chat = airllama inference on the chat template's text",
      len(answer) > 10 and exp["text"].startswith(answer), f"{answer!r} vs inference {exp['text']!r}")
check("chat usage and finish_reason",
      r.usage.prompt_tokens == exp["prompt_tokens"]
      and r.usage.completion_tokens <= exp["max_tokens"]
      and r.choices[0].finish_reason in ("stop", "length")
      and (r.choices[0].finish_reason == "length") == (r.usage.completion_tokens == exp["max_tokens"]),
      f"{r.usage}, {r.choices[0].finish_reason}")
print("   chat answer:", repr(answer))

# --- streamed: the same text in chunks, usage in the last one
stream = chat(question, max_tokens=exp["max_tokens"], temperature=0, stream=True)
pieces, finish, usage, roles = [], None, None, []
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.role:
            roles.append(c.delta.role)
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
check("streamed chat = the non-streamed answer", "".join(pieces) == answer and len(pieces) > 3,
      f"{len(pieces)} chunks")
check("streamed chat ends with finish_reason and usage",
      roles == ["assistant"] and finish == r.choices[0].finish_reason and usage is not None
      and usage.completion_tokens == r.usage.completion_tokens, f"{finish}, {usage}")
cached = usage.prompt_tokens_details.cached_tokens
check("a repeated prompt reuses the KV cache", cached == exp["prompt_tokens"] - 1, f"{cached} tokens reused")

# --- a second turn reuses the first turn's KV entries
turn2 = question + [{"role": "assistant", "content": answer},
                    {"role": "user", "content": "And what is the capital of Germany?"}]
r2 = chat(turn2, max_tokens=24, temperature=0)
cached = r2.usage.prompt_tokens_details.cached_tokens
check("second turn reuses the conversation's KV cache",
      cached >= exp["prompt_tokens"] and r2.choices[0].message.content,
      f"{cached} of {r2.usage.prompt_tokens} prompt tokens reused: {r2.choices[0].message.content!r}")
reused_logged = [l for l in log_lines() if f"{r2.id}: started" in l]
check("the log says how many tokens were reused",
      len(reused_logged) == 1 and f"{cached} reused from the KV cache" in reused_logged[0], reused_logged[0])

# The raw event stream: OpenAI's framing, ending with data: [DONE].
status, body = raw("POST", "/v1/completions", json.dumps(
    {"model": MODEL, "prompt": "Hello", "max_tokens": 3, "temperature": 0, "stream": True,
     "stream_options": {"include_usage": True}}), {"Content-Type": "application/json"})
events = [e for e in body.split("\n\n") if e.startswith("data: ")]
usage_only = json.loads(events[-2][6:])
check("SSE framing ends with data: [DONE], after the usage-only chunk stream_options asked for",
      status == 200 and events[-1] == "data: [DONE]" and usage_only["choices"] == []
      and usage_only["object"] == "text_completion" and usage_only["usage"]["completion_tokens"] == 3,
      f"{len(events)} events")

# --- a stop string: the text before it, finish_reason "stop"
counting = "1, 2, 3, 4, 5,"
free = completion(counting, max_tokens=16, temperature=0).choices[0].text
words = free.split()
stop = " " + words[2]
at = free.index(stop)
r = completion(counting, max_tokens=16, temperature=0, stop=[stop, "never-seen"])
check("a stop string ends the answer before it", r.choices[0].text == free[:at]
      and r.choices[0].finish_reason == "stop", f"{free!r} stopped at {stop!r}: {r.choices[0].text!r}")
r = chat(question, max_tokens=40, temperature=0, stop=" Paris" if " Paris" in answer else answer.split()[1])
check("a stop string in chat", r.choices[0].finish_reason == "stop"
      and answer.startswith(r.choices[0].message.content), repr(r.choices[0].message.content))

# An end-of-turn token: finish_reason "stop" before max_tokens. Text held back because it
# could have begun a stop string is still sent when the answer ends there.
short = [{"role": "user", "content": "What is 2+2?"}]
r = chat(short, max_tokens=60, temperature=0)
ended = r.choices[0].message.content
check("an end-of-turn token ends the answer with finish_reason stop",
      r.choices[0].finish_reason == "stop" and r.usage.completion_tokens < 60 and ended,
      f"{r.usage.completion_tokens} tokens: {ended!r}")
r = chat(short, max_tokens=60, temperature=0, stop=[ended[-5:] + "\u0007never"])
check("text held back for a stop string that never came is sent at the end",
      r.choices[0].message.content == ended and r.choices[0].finish_reason == "stop", repr(r.choices[0].message.content))

# --- a seed makes temperature > 0 repeatable
story = [{"role": "user", "content": "Tell me a short story about a cat."}]
a = chat(story, max_tokens=20, temperature=1.0, top_p=0.95, seed=1234).choices[0].message.content
b = chat(story, max_tokens=20, temperature=1.0, top_p=0.95, seed=1234).choices[0].message.content
others = {chat(story, max_tokens=20, temperature=1.0, top_p=0.95, seed=s).choices[0].message.content
          for s in (1, 2, 3)}
check("the same seed at temperature 1 gives the same text", a == b, repr(a))
check("other seeds give other texts", len(others | {a}) > 1, f"{len(others | {a})} distinct of 4")

# --- concurrent requests: all answered, in arrival order, none mixed
prompts = ["The capital of Italy is", "My favourite colour is", "Water boils at", "The sun rises in the"]
solo = [completion(p, max_tokens=10, temperature=0).choices[0].text for p in prompts]
results = [None] * len(prompts)


def ask(i):
    results[i] = completion(prompts[i], max_tokens=10, temperature=0)


threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
for t in threads:
    t.start()
for t in threads:
    t.join()
check("concurrent requests are all answered, each with its own text",
      [r.choices[0].text for r in results] == solo, json.dumps(solo))
ids = {r.id: i for i, r in enumerate(results)}
started = [l.split(":")[0] for l in log_lines() if ": started after" in l and l.split(":")[0] in ids]
numbers = [int(s.split("-")[1]) for s in started]
check("they ran one at a time in arrival (id) order", len(started) == len(prompts) and numbers == sorted(numbers),
      " ".join(started))

# --- a full queue answers 503; a client that disconnects mid-stream frees the cluster
queue = EXPECTED["queue"]
holder = openai.OpenAI(base_url=BASE + "/v1", api_key="unused", max_retries=0, timeout=600)
long = holder.completions.create(model=MODEL, prompt=counting, max_tokens=900, temperature=0, stream=True)
first = next(iter(long))
long_id = first.id
wait_for("the long answer to run", lambda: health()["busy"])
waiting = [None] * queue


def wait_in_queue(i):
    waiting[i] = completion("Hello, my name is", max_tokens=4, temperature=0)


threads = [threading.Thread(target=wait_in_queue, args=(i,)) for i in range(queue)]
for t in threads:
    t.start()
wait_for("the queue to fill", lambda: health()["queued"] == queue)
try:
    completion("One more", max_tokens=4)
    check("a full queue answers 503", False, "answered")
except openai.APIStatusError as e:
    check("a full queue answers 503 with a JSON error", e.status_code == 503
          and e.body.get("message", "").startswith("the server is busy"), f"{e.status_code}: {e.body}")
long.close()
holder.close()
wait_for("the disconnect to be seen", lambda: any(l.startswith(long_id + ": client disconnected") for l in log_lines()))
for t in threads:
    t.join()
line = next(l for l in log_lines() if l.startswith(long_id + ": client disconnected"))
generated = int(line.split(" after ")[1].split(" tokens")[0])
check("a disconnect mid-stream frees the cluster", generated < 900 and all(w is not None for w in waiting),
      f"{line}; the {queue} queued requests were then answered")

# A client waiting for one whole answer that hangs up frees the cluster too.
with socket.create_connection((HOST, PORT), timeout=600) as s:
    body = json.dumps({"model": MODEL, "prompt": counting, "max_tokens": 900, "temperature": 0}).encode()
    s.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    wait_for("the answer to run", lambda: health()["busy"])
gone = [l for l in log_lines() if ": client disconnected" in l and not l.startswith(long_id)]
wait_for("the disconnect to be seen", lambda: len(
    [l for l in log_lines() if ": client disconnected" in l and not l.startswith(long_id)]) > len(gone))
line = [l for l in log_lines() if ": client disconnected" in l and not l.startswith(long_id)][-1]
# (busy is cleared just after that line is written)
wait_for("the cluster to be idle", lambda: not health()["busy"])
check("a non-streamed request whose client hangs up frees the cluster", " of max 900" in line, line)

# A client that never sends its body holds only its own connection.
stuck = socket.create_connection((HOST, PORT), timeout=600)
stuck.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
               "Transfer-Encoding: chunked\r\n\r\n").encode())
r = completion("Hello", max_tokens=2, temperature=0)
check("a client stalled mid-body does not hold up others", r.usage.completion_tokens == 2, repr(r.choices[0].text))
stuck.close()

# --- bad requests: OpenAI-shaped JSON errors with their status codes
JSON = {"Content-Type": "application/json"}


def error_of(status_body):
    status, body = status_body
    return status, body["error"] if isinstance(body, dict) and "error" in body else body


status, err = error_of(raw("POST", "/v1/chat/completions", b'{"messages": [', JSON))
check("malformed JSON -> 400", status == 400 and err["type"] == "invalid_request_error", err["message"])
status, err = error_of(raw("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', JSON))
check("invalid UTF-8 -> 400", status == 400 and "UTF-8" in err["message"], err["message"])
try:
    chat(question, max_tokens="ten")
    check("a field of the wrong type -> 422", False, "answered")
except openai.UnprocessableEntityError as e:
    check("a field of the wrong type -> 422", e.status_code == 422, str(e.body))
status, err = error_of(raw("POST", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": "hi"}), JSON))
check("messages of the wrong type -> 422", status == 422, err["message"])
try:
    completion("hello " * EXPECTED["seq_len"], max_tokens=4)
    check("a prompt longer than the context -> 400", False, "answered")
except openai.BadRequestError as e:
    check("a prompt longer than the context -> 400", e.status_code == 400 and e.code == "context_length_exceeded",
          e.message)
try:
    chat(question, max_tokens=10**9)
    check("huge max_tokens -> 400", False, "answered")
except openai.BadRequestError as e:
    check("huge max_tokens -> 400", e.status_code == 400 and e.param == "max_tokens", e.message)
try:
    client.models.retrieve("no-such-model")
    check("an unknown model -> 404", False, "answered")
except openai.NotFoundError as e:
    check("an unknown model -> 404", e.status_code == 404, e.message)
status, err = error_of(raw("GET", "/v1/no-such-route"))
check("an unknown route -> 404 JSON", status == 404 and err["code"] == "not_found", err["message"])
# Oversized: the 413 comes from the headers alone (Expect: 100-continue, no body sent), so the
# answer is read before the client would write megabytes the server never reads.
with socket.create_connection((HOST, PORT), timeout=600) as s:
    size = EXPECTED["max_body"] + 1
    s.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {size}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
head, _, body = data.partition(b"\r\n\r\n")
check("a body over --max-body -> 413 JSON", head.startswith(b"HTTP/1.1 413") and b'"error"' in body,
      head.split(b"\r\n")[0].decode())
wait_for("the cluster to be idle", lambda: not health()["busy"])
h = health()
check("the server is still healthy with nothing queued", h["status"] == "ok" and h["queued"] == 0, json.dumps(h))
print(f"api client: all {checks} checks passed", flush=True)
