"""A custom runtime for the http runtime's tests: the standard library's http.server on
$FC_SERVER_PORT, told what to do by each event's payload.

Hooks answer with the status in $STATUS_INITIALIZE, $STATUS_PRE_FREEZE or $STATUS_PRE_STOP
(default 200), and append their name to the file $HOOK_LOG when it is set. When $INIT_PLAN names
a file, each call of /initialize (by any server) takes its first line: a status to answer, or
`exit` to die without answering; an empty plan leaves $STATUS_INITIALIZE.
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

initialized = 0
served = 0
lock = threading.Lock()


def note_hook(name: str) -> None:
    path = os.environ.get("HOOK_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{name} {os.getpid()}\n")


def next_in_plan() -> str | None:
    """Take the first line of $INIT_PLAN (the servers of a test call /initialize in turn)."""
    path = os.environ.get("INIT_PLAN")
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines:
        return None
    with open(path, "w") as f:
        f.write("".join(f"{line}\n" for line in lines[1:]))
    return lines[0]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        size = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(size)
        if self.path == "/initialize":
            self.hook("initialize")
        elif self.path == "/invoke":
            self.invoke(json.loads(body or b"null"))
        else:
            self.answer(404, b"no such path")

    def do_GET(self) -> None:
        if self.path in ("/pre-freeze", "/pre-stop"):
            self.hook(self.path[1:].replace("-", "_"))
        else:
            self.answer(404, b"no such path")

    def hook(self, name: str) -> None:
        global initialized
        rid = self.headers.get("x-fc-request-id")
        print(f"hook {name} for {rid}", flush=True)
        status = int(os.environ.get(f"STATUS_{name.upper()}", "200"))
        planned = next_in_plan() if name == "initialize" else None
        if planned == "exit":
            note_hook("initialize-exit")
            os._exit(7)
        status = int(planned) if planned else status
        if name == "initialize" and status < 300:
            with lock:
                initialized += 1
        note_hook(name)
        self.answer(status, f"{name} answered {status}".encode())

    def invoke(self, event: object) -> None:
        global served
        with lock:
            served += 1
        rid = self.headers.get("x-fc-request-id")
        event = event if isinstance(event, dict) else {"echo": event}
        if "print" in event:
            print(f"{rid} says {event['print']}", flush=True)
            print(f"{rid} warns {event['print']}", file=sys.stderr, flush=True)
        if "hog" in event:
            hog = b"x" * (event["hog"] << 20)  # noqa: F841 - held while it sleeps
            time.sleep(10)
        if "spin" in event:
            until = time.process_time() + event["spin"]
            while time.process_time() < until:
                pass
        if "sleep" in event:
            time.sleep(event["sleep"])
        if "exit" in event:
            print("exiting", flush=True)
            os._exit(event["exit"])
        if "status" in event:
            self.answer(event["status"], event.get("body", "").encode())
        elif "text" in event:
            self.answer(200, event["text"].encode())
        else:
            answer = {
                "echo": event.get("echo"),
                "pid": os.getpid(),
                "ports": [os.environ["FC_SERVER_PORT"], os.environ["PORT"]],
                "request_id": rid,
                "attempt": self.headers.get("x-fnspool-attempt"),
                "timeout_ms": self.headers.get("x-fnspool-timeout-ms"),
                "control_path": self.headers.get("x-fc-control-path"),
                "content_type": self.headers.get("content-type"),
                "fc_headers": {
                    k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-fc-")
                },
                "initialized": initialized,
                "served": served,
            }
            self.answer(200, json.dumps(answer).encode())

    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep event logs to what the tests print


if os.environ.get("START_DELAY"):
    time.sleep(float(os.environ["START_DELAY"]))
if os.environ.get("FAIL_AT_START"):
    print("cannot start: " + os.environ["FAIL_AT_START"], file=sys.stderr, flush=True)
    sys.exit(3)
print(f"listening on {os.environ['FC_SERVER_PORT']} (PORT={os.environ['PORT']})", flush=True)
ThreadingHTTPServer(("127.0.0.1", int(os.environ["FC_SERVER_PORT"])), Handler).serve_forever()
