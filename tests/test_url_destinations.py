"""URL destinations through the real daemon: the record POSTed as JSON, retried with backoff
while the server fails, resumed after a restart, given up past destination_max_age when the
server never answers; what became of it in `events get`."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from conftest import fnspool, fnspool_json, wait_for


class Receiver(ThreadingHTTPServer):
    """A local server that answers 503 until told to recover, and keeps what it was sent."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.healthy = False
        self.posts: list[tuple[dict[str, str], dict[str, Any]]] = []


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.posts.append((dict(self.headers), body))
        self.send_response(200 if self.server.healthy else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def serving(server: Receiver) -> Iterator[Receiver]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def define(spool: Path, name: str, url: str, max_age: float = 86400) -> None:
    """An echo function whose records go to `url`, retried quickly."""
    (spool / "functions" / f"{name}.toml").write_text(
        'runtime = "python"\ncode = "echo"\nhandler = "index.handler"\n'
        f'[async]\non_success = "{url}"\nbackoff = 0.2\nbackoff_max = 0.5\n'
        f"destination_max_age = {max_age}\n"
    )


def destination(spool: Path, request_id: str) -> dict[str, Any]:
    return fnspool_json(spool, "events", "get", request_id)["destination"]


def invoke(spool: Path, function: str) -> str:
    out = fnspool(spool, "invoke", function, "--payload", '{"n": 1}', "--wait", "--json")
    done = json.loads(out.stdout)
    assert done["state"] == "Succeeded"
    return done["id"]


def test_a_url_destination_is_retried_until_its_server_recovers_even_across_a_restart(
    spool, daemon
):
    with serving(Receiver()) as server:
        url = f"http://127.0.0.1:{server.server_port}/done"
        define(spool, "hooked", url)
        first = daemon.start("--drain-timeout", "2")
        rid = invoke(spool, "hooked")
        owed = wait_for(
            lambda: (d := destination(spool, rid)).get("failed_tries", 0) >= 2 and d,
            what="two failed POSTs",
        )
        assert owed["delivered"] is False and owed["to"] == url
        assert owed["last_error"].startswith("HTTP 503") and owed["next_try_at"]
        text = fnspool(spool, "events", "get", rid).stdout
        assert f"not delivered yet: to {url} (Success)" in text and "tries failed" in text
        assert first.stop() == 0  # the backlog does not hold the shutdown
        server.healthy = True
        daemon.start()
        done = wait_for(lambda: (d := destination(spool, rid))["delivered"] and d, what="POST")
    assert done["to"] == url and done["condition"] == "Success" and done["failed_tries"] >= 2
    assert done["given_up"] is False
    assert len(server.posts) >= 3
    headers, record = server.posts[-1]
    assert headers["Content-Type"] == "application/json" and headers["X-Call-Id"] == rid
    assert record["requestContext"]["requestId"] == rid
    assert record["requestContext"]["condition"] == "Success"
    assert json.loads(record["responsePayload"]) == {"n": 1}
    assert all(body == record for _h, body in server.posts)  # the same record every time


def test_a_url_that_never_answers_is_given_up_after_destination_max_age(spool, daemon):
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        define(spool, "unheard", url, max_age=3)
        daemon.start()
        rid = invoke(spool, "unheard")
        gave_up = wait_for(lambda: (d := destination(spool, rid)).get("given_up") and d,
                           what="the delivery given up")  # fmt: skip
    assert gave_up["delivered"] is False and gave_up["to"] == url
    assert gave_up["last_error"].startswith("no answer within")
    assert gave_up["next_try_at"] is None
    assert "given up: not delivered to" in fnspool(spool, "events", "get", rid).stdout


def test_a_url_destination_must_be_a_url_to_post_to(spool, daemon):
    define(spool, "badurl", "http:///no-host")
    out = fnspool(spool, "functions", "list", check=False)
    assert out.returncode != 0 and "names no host" in out.stdout + out.stderr
