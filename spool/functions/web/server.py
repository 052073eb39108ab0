"""A custom runtime with nothing but the standard library: greets whoever the event names.

fnspool starts it with the port to listen on in FC_SERVER_PORT (and PORT), then calls:
  POST /invoke       the event's payload as the body; the answer's body is the result
  POST /initialize   once, before the first event   ([lifecycle] initializer = true)
  GET  /pre-freeze   before the idle instance is frozen (pre_freeze = true)
  GET  /pre-stop     before the instance is stopped     (pre_stop = true)
Each request carries the event's id in `x-fc-request-id`. A 4xx answer fails that call; a 5xx
answer (or a crash) also makes fnspool replace the instance.
"""

import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

state = {"greetings": 0, "ready_at": None}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        rid = self.headers.get("x-fc-request-id")
        if self.path == "/initialize":
            state["ready_at"] = time.time()  # open connections, load models... once per instance
            print(f"initialized for {rid}")
            self.reply(200, {"ok": True})
        elif self.path == "/invoke":
            try:
                event = json.loads(body or b"{}")
            except ValueError:
                self.reply(400, {"error": "the payload is not JSON"})  # fails this attempt
                return
            name = event.get("name", "world") if isinstance(event, dict) else "world"
            state["greetings"] += 1
            print(f"{rid}: greeting {name}")  # goes to the event's log
            self.reply(200, {"greeting": f"Hello, {name}!", "served": state["greetings"]})
        else:
            self.reply(404, {"error": f"no {self.path} here"})

    def do_GET(self) -> None:
        if self.path == "/pre-freeze":
            print(f"about to be frozen after {state['greetings']} greetings")
            self.reply(200, {})
        elif self.path == "/pre-stop":
            print("stopping: flush buffers, close connections")
            self.reply(200, {})
        else:
            self.reply(404, {"error": f"no {self.path} here"})

    def reply(self, status: int, answer: object) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request on stderr would crowd the event logs


if __name__ == "__main__":
    port = int(os.environ["FC_SERVER_PORT"])
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
