"""Functions that misbehave on purpose: escapees, fork bombs, floods, crashes (issue 7)."""

import ctypes
import os
import signal
import sys
import time


def _note(event, what, pid):
    """Record a pid where the test can find it (one file per process, written atomically)."""
    folder = event["pids"]
    temp = os.path.join(folder, f".{what}-{pid}.tmp")
    with open(temp, "w") as f:
        f.write(str(pid))
    os.rename(temp, os.path.join(folder, f"{what}-{pid}"))


def _sleep_forever():
    while True:
        time.sleep(3600)


def _daemonize(event, what):
    """The classic double fork: fork, setsid, fork, the middle one exits (an orphan)."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            _note(event, what, os.getpid())
            _sleep_forever()
        os._exit(0)


def _session_child(event, what):
    """A child that leaves the process group (setsid) but keeps its parent."""
    if os.fork() == 0:
        os.setsid()
        _note(event, what, os.getpid())
        _sleep_forever()


def _hopper(event, what, hops):
    """A lineage that never keeps a pid: fork, setsid, the parent exits, again and again."""
    if os.fork() != 0:
        return
    for _ in range(hops):
        if os.fork() != 0:
            os._exit(0)
        os.setsid()
        time.sleep(0.002)
    _note(event, what, os.getpid())
    _sleep_forever()


def escape(event, context):
    """Leave escapees of every kind, then hang (or return when asked)."""
    for _ in range(event.get("daemons", 2)):
        _daemonize(event, "daemon")
    for _ in range(event.get("sessions", 2)):
        _session_child(event, "session")
    for _ in range(event.get("hoppers", 0)):
        _hopper(event, "hopper", event.get("hops", 10**9))
    for _ in range(event.get("group", 0)):  # a plain fork bomb inside the group
        if os.fork() == 0:
            _note(event, "group", os.getpid())
            while True:
                if os.fork() == 0:
                    time.sleep(0.01)
                    os._exit(0)
                time.sleep(0.005)
    _note(event, "worker", os.getpid())
    if event.get("return"):
        # return once the hoppers have left the group (an idle instance's group is frozen)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            settled = [n for n in os.listdir(event["pids"]) if n.startswith("hopper-")]
            if len(settled) >= event.get("hoppers", 0):
                break
            time.sleep(0.01)
        return "escaped"
    _sleep_forever()


def flood(event, context):
    """Write as fast as possible to stdout for `seconds`."""
    chunk = b"x" * 65535 + b"\n"
    out = sys.stdout.buffer
    end = time.monotonic() + event["seconds"]
    written = 0
    while time.monotonic() < end:
        out.write(chunk)
        written += len(chunk)
    out.flush()
    return {"written": written}


def close_pipes(event, context):
    """Close every descriptor past stderr (the worker's pipes to the daemon), keep running."""
    _note(event, "worker", os.getpid())
    os.closerange(3, 65536)
    _sleep_forever()


def exit_now(event, context):
    """Exit in the middle of the event, without cleanup."""
    print("about to _exit", flush=True)
    os._exit(event.get("code", 3))


def segfault(event, context):
    """Dereference NULL."""
    print("about to segfault", flush=True)
    ctypes.string_at(0)


def ignore_term(event, context):
    """Ignore SIGTERM and keep working."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _note(event, "worker", os.getpid())
    _sleep_forever()


def hanging_pre_stop(context):
    """A PreStop that never returns."""
    _sleep_forever()


def echo(event, context):
    """Return the event."""
    return event


def sleep_or_fail(event, context):
    """Fail at once when asked, else sleep (until the timeout cuts the attempt)."""
    if event.get("fail"):
        raise RuntimeError(f"failing attempt {context.attempt} on purpose")
    time.sleep(event.get("sleep", 1000))
    return "slept"
