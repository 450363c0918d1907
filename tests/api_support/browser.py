"""Opens the chat page of `airllama api` in headless Chromium, types a message, waits for the
answer and saves a screenshot (tests/api_server.rs runs it).

usage: browser.py BASE_URL CHROMIUM OUT_DIR

Chromium is driven over its DevTools protocol with the `websocket-client` package. It runs with
a fresh profile in OUT_DIR and every network feature that would reach outside turned off (this
machine has no network). Nothing is timed: waits poll the page until its state is reached.
"""
import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import websocket

BASE, CHROMIUM, OUT = sys.argv[1], sys.argv[2], sys.argv[3]
profile = os.path.join(OUT, "chromium-profile")
shutil.rmtree(profile, ignore_errors=True)
os.makedirs(profile)
chromium = subprocess.Popen(
    [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
     "--disable-background-networking", "--disable-component-update", "--disable-sync",
     "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
     "--window-size=1000,800", "about:blank"],
    stdout=subprocess.DEVNULL, stderr=open(os.path.join(OUT, "chromium.log"), "w"))
try:
    # Chromium writes the port it chose into the profile.
    port_file = os.path.join(profile, "DevToolsActivePort")
    deadline = time.monotonic() + 600
    while not (os.path.exists(port_file) and open(port_file).read().count("\n") >= 1):
        if chromium.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"chromium exited with {chromium.returncode}; see {OUT}/chromium.log")
        time.sleep(0.05)
    port = int(open(port_file).read().split("\n")[0])
    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
    page = next(t for t in targets if t["type"] == "page")
    ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=600, suppress_origin=True)
    next_id = 0

    def cdp(method, **params):
        global next_id
        next_id += 1
        ws.send(json.dumps({"id": next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(ws.recv())
            if msg.get("id") == next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(expression):
        r = cdp("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(expression):
        # The limit turns a page that never gets there into a failure instead of a hung run.
        deadline = time.monotonic() + 600
        while not js(expression):
            if time.monotonic() > deadline:
                raise AssertionError(f"still waiting for {expression} after 600 s")
            time.sleep(0.1)

    cdp("Page.enable")
    cdp("Page.navigate", url=BASE + "/")
    wait_for("document.readyState === 'complete' && !!document.getElementById('input')")
    # The header shows the model once /v1/models answered.
    wait_for("!document.getElementById('model').textContent.includes('connecting')")
    print("page header:", js("document.getElementById('model').textContent"), flush=True)
    # Type as a user would: focus the box, insert the text, press Enter.
    js("document.getElementById('max_tokens').value = '24'; document.getElementById('temperature').value = '0'; "
       "document.getElementById('input').focus()")
    cdp("Input.insertText", text="What is the capital of France?")
    for kind in ("keyDown", "keyUp"):
        cdp("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
            **({"text": "\r"} if kind == "keyDown" else {}))
    wait_for("document.querySelector('.msg.assistant') && document.querySelector('.msg.assistant').dataset.done === '1'")
    user = js("document.querySelector('.msg.user').textContent")
    answer = js("document.querySelector('.msg.assistant').textContent")
    errors = js("Array.from(document.querySelectorAll('.msg.error')).map(e => e.textContent)")
    shot = cdp("Page.captureScreenshot", format="png")
    path = os.path.join(OUT, "chat-page.png")
    with open(path, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    print("screenshot:", path, flush=True)
    print("user:", repr(user), flush=True)
    print("answer:", repr(answer), flush=True)
    assert user == "What is the capital of France?", user
    assert not errors, errors
    assert len(answer.split()) >= 3, answer
    print("browser: the page answered", flush=True)
    ws.close()
finally:
    chromium.terminate()
    try:
        chromium.wait(timeout=30)
    except subprocess.TimeoutExpired:
        chromium.kill()
        chromium.wait()
