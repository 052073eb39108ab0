"""fnspool's python worker: import one handler, then run the events and hooks the daemon sends.

Run by path with the function's own interpreter (`PYTHON -u bootstrap.py`), which may be a
virtualenv without fnspool's dependencies: standard library only, never the `daemon` package.

Frames on two dedicated pipes (fds in FNSPOOL_CTL_IN / FNSPOOL_CTL_OUT): a 4-byte big-endian
length, then a JSON object. stdout and stderr are the function's own output.

JSON is the standard library's, not msgspec's, on purpose: importing msgspec costs about as much
as starting the interpreter, and a result must mean the same thing whatever the function's
interpreter has installed (msgspec would accept sets and datetimes that json refuses).
"""

import json
import os
import sys
import time

TYPE_CHECKING = False  # not from typing: importing it costs start-up time
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

_RESULT_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_FRAME_JSON = json.JSONEncoder(separators=(",", ":"))  # ASCII: safe for any message text
_HEADER = 4
_MAX_RESULT = int(os.environ.get("FNSPOOL_MAX_RESULT", 8 << 20))  # set by the daemon (its limits)


class Retry(Exception):
    """Raise from a handler to fail this attempt and ask for a retry after `delay` seconds."""

    def __init__(self, message: str = "", delay: "float | None" = None) -> None:
        super().__init__(message or "the handler asked for a retry")
        self.delay = None if delay is None else float(delay)


Retry.__module__ = "fnspool_runtime"


class Context:
    """What a handler or hook is told about its call, as in Function Compute's Python runtime."""

    __slots__ = ("_deadline", "attempt", "function_name", "request_id")

    def __init__(self, request_id: str, function_name: str, attempt: int, timeout_ms: int) -> None:
        self.request_id = request_id
        self.function_name = function_name
        self.attempt = attempt
        self._deadline = time.monotonic() + timeout_ms / 1000

    def remaining_time_ms(self) -> int:
        """Milliseconds left before the daemon kills this call."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    @property
    def logger(self) -> "logging.Logger":
        """A logger writing to stderr, each line carrying the request id."""
        return _function_logger()


_current: "list[Context | None]" = [
    None
]  # the Context of the call running now, for the logger's lines
_logger: "list[logging.Logger]" = []
_last_cpu = [0.0]


def _function_logger() -> "logging.Logger":
    if not _logger:
        import logging

        def add_request_id(record: "logging.LogRecord") -> bool:
            record.request_id = _current[0].request_id if _current[0] else "-"
            return True

        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(add_request_id)
        formatter = logging.Formatter(
            "%(asctime)s.%(msecs)03dZ %(request_id)s [%(levelname)s] %(message)s",
            "%Y-%m-%dT%H:%M:%S",
        )
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
        logger = logging.getLogger("fnspool.function")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        _logger.append(logger)
    return _logger[0]


class _Channel:
    """Framed messages over the two control pipes (blocking on this side)."""

    def __init__(self, rfd: int, wfd: int, send_lock: "object | None" = None) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.buf = bytearray()
        self.send_lock = send_lock  # replies from two threads share one pipe

    def receive(self) -> "dict | None":
        """The next message, or None when the daemon closed the pipe."""
        buf = self.buf
        while True:
            if len(buf) >= _HEADER:
                end = _HEADER + int.from_bytes(buf[:_HEADER], "big")
                if len(buf) >= end:
                    body = bytes(buf[_HEADER:end])
                    del buf[:end]
                    return json.loads(body)
                want = end - len(buf)
            else:
                want = _HEADER - len(buf)
            chunk = os.read(self.rfd, max(1 << 16, want))
            if not chunk:
                return None
            buf += chunk

    def send(self, body: bytes) -> None:
        """Write one frame, whole."""
        for stream in (sys.stdout, sys.stderr):
            try:  # noqa: SIM105 - contextlib costs start-up time
                stream.flush()
            except Exception:  # a handler may have replaced or closed them
                pass
        view = memoryview(len(body).to_bytes(_HEADER, "big") + body)
        lock = self.send_lock
        if lock is not None:
            lock.acquire()  # type: ignore[attr-defined]
        try:
            while view:
                view = view[os.write(self.wfd, view) :]
        finally:
            if lock is not None:
                lock.release()  # type: ignore[attr-defined]


def _usage() -> bytes:
    """The usage fields that end a reply: CPU since the last reply, peak memory so far."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime
    delta, _last_cpu[0] = cpu - _last_cpu[0], cpu
    return f'"cpu_ms":{delta * 1000:.3f},"max_memory_mb":{ru.ru_maxrss / 1024:.2f}}}'.encode()


def _error(exc: BaseException) -> dict:
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next  # the worker's own frames say nothing to the function's author
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return {"type": type(exc).__name__, "message": str(exc), "traceback": text}


def _call(fn: "Callable[..., object]", *args: object) -> object:
    result = fn(*args)
    if hasattr(result, "__await__") and hasattr(result, "send"):
        import asyncio

        result = asyncio.run(result)  # type: ignore[arg-type]
    return result


def _encode_result(result: object) -> "tuple[bytes | None, dict | None]":
    try:
        body = _RESULT_JSON.encode(result).encode("utf-8")
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as exc:
        message = f"the handler's result is not JSON-serialisable: {exc}"
        return None, {"type": "InvalidResult", "message": message}
    if len(body) > _MAX_RESULT:
        message = (
            f"the handler's result is {len(body):,} bytes, "
            f"over the {_MAX_RESULT:,}-byte limit for a result"
        )
        return None, {"type": "ResultTooLarge", "message": message}
    return body, None


def _invoke(handler: "Callable[..., object]", msg: dict, function_name: str) -> bytes:
    rid = msg["id"]
    ctx = Context(rid, function_name, msg.get("attempt", 1), msg.get("timeout_ms", 0))
    _current[0] = ctx
    retry_delay = None
    try:
        body, error = _encode_result(_call(handler, msg.get("payload"), ctx))
    except Exception as exc:  # any failure of the handler fails the attempt
        body, error = None, _error(exc)
        if isinstance(exc, Retry):
            error["type"], retry_delay = "Retry", exc.delay
    finally:
        _current[0] = None
    head = f'{{"t":"result","id":{_FRAME_JSON.encode(rid)},'
    if body is not None:
        return b"".join((head.encode(), b'"ok":true,"result":', body, b",", _usage()))
    error_json, delay_json = _FRAME_JSON.encode(error), _FRAME_JSON.encode(retry_delay)
    fields = f'"ok":false,"error":{error_json},"retry_delay":{delay_json},'
    return (head + fields).encode() + _usage()


def _hook(msg: dict, function_name: str) -> bytes:
    ctx = Context(msg.get("id") or "", function_name, 0, msg.get("timeout_ms", 0))
    previous, _current[0] = _current[0], ctx  # PreStop may run beside an event
    reply = {"t": "hook_result", "hook": msg.get("hook"), "ok": True}
    try:
        _call(_resolve(msg["name"]), ctx)
    except Exception as exc:  # a failing hook is reported, never fatal here
        reply["ok"], reply["error"] = False, _error(exc)
    finally:
        _current[0] = previous
    return (_FRAME_JSON.encode(reply)[:-1] + ",").encode() + _usage()


def _resolve(spec: str) -> "Callable[..., object]":
    module, _, name = spec.rpartition(".")
    if not module or not name:
        raise ValueError(f"handler {spec!r} is not in the form module.function")
    __import__(module)
    return getattr(sys.modules[module], name)


def _die_with_parent() -> None:
    """Ask for SIGKILL when the daemon dies; exit if it already has."""
    try:
        import _ctypes  # the bare C module: `ctypes` itself costs several ms to import

        prctl = _ctypes.dlsym(_ctypes.dlopen(None), "prctl")  # type: ignore[arg-type]
        _ctypes.call_function(prctl, (1, 9, 0, 0, 0))  # PR_SET_PDEATHSIG, SIGKILL
    except Exception:  # the private entry points moved: take the public way
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)
        except Exception:  # not Linux: the pipes' EOF still ends the worker
            pass
    parent = os.environ.get("FNSPOOL_PARENT_PID")
    if parent and os.getppid() != int(parent):
        os._exit(1)  # the daemon died before the request above took effect


def _install_runtime_module() -> None:
    module = type(sys)("fnspool_runtime")
    module.__doc__ = "What fnspool's python runtime offers to handlers."
    module.__dict__.update(Retry=Retry, Context=Context)
    sys.modules["fnspool_runtime"] = module


def _serve_pre_stop(chan: _Channel, function_name: str) -> None:
    """PreStop arrives on a pipe of its own and runs on this thread, so that it also runs while
    the main thread is busy with an event that is being stopped."""
    while True:
        msg = chan.receive()
        if msg is None:
            return
        chan.send(_hook(msg, function_name))


def _start_pre_stop_thread(rfd: int, main: _Channel, function_name: str) -> None:
    import _thread  # the bare module: `threading` costs start-up time

    chan = _Channel(rfd, main.wfd)
    chan.send_lock = main.send_lock = _thread.allocate_lock()
    _thread.start_new_thread(_serve_pre_stop, (chan, function_name))


def main() -> int:
    """Start, import the handler, report ready, then serve until the daemon closes the pipe."""
    _die_with_parent()
    env = os.environ
    chan = _Channel(int(env.pop("FNSPOOL_CTL_IN")), int(env.pop("FNSPOOL_CTL_OUT")))
    stop_fd = int(env.pop("FNSPOOL_CTL_STOP", "-1"))
    for fd in (chan.rfd, chan.wfd, stop_fd):
        if fd >= 0:
            os.set_inheritable(fd, False)  # a handler's own children must not hold our pipes
    code_dir = env.get("FNSPOOL_CODE_DIR") or os.getcwd()
    os.chdir(code_dir)
    sys.path[0] = code_dir  # instead of this file's folder
    function_name = env.get("FNSPOOL_FUNCTION_NAME", "")
    _install_runtime_module()
    try:
        handler = _resolve(env.get("FNSPOOL_HANDLER", "index.handler"))
    except BaseException as exc:  # even SystemExit at import is a start failure
        chan.send(_FRAME_JSON.encode({"t": "ready", "error": _error(exc)}).encode())
        return 1
    if stop_fd >= 0:
        _start_pre_stop_thread(stop_fd, chan, function_name)
    _usage()
    chan.send(b'{"t":"ready"}')
    return _serve(chan, handler, function_name)


def _serve(chan: _Channel, handler: "Callable[..., object]", function_name: str) -> int:
    while True:
        msg = chan.receive()
        if msg is None:
            return 0
        kind = msg.get("t")
        if kind == "invoke":
            chan.send(_invoke(handler, msg, function_name))
        elif kind == "hook":
            chan.send(_hook(msg, function_name))
        else:
            print(f"fnspool worker: unknown message {kind!r}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
