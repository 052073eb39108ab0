"""Handlers for tests/test_python_runtime.py, run by real fnspool python workers."""

import asyncio
import os
import signal
import subprocess
import sys
import time

from fnspool_runtime import Retry

initialized = False


def echo(event, context):
    return event


def noop(event, context):
    return None


def pid(event, context):
    return os.getpid()


def chatty(event, context):
    print(f"out {event}")
    print(f"err {event}", file=sys.stderr)
    context.logger.info("logged %s", event)
    return event


def boom(event, context):
    raise ValueError(f"boom {event}")


def not_json(event, context):
    return {1, 2, 3}


def retry_later(event, context):
    raise Retry("not yet", delay=2)


def sleepy(event, context):
    child = subprocess.Popen(["sleep", "1000"])
    print(f"grandchild {child.pid}", flush=True)
    time.sleep(event)


def exit3(event, context):
    print("about to exit", flush=True)
    os._exit(3)


async def async_echo(event, context):
    await asyncio.sleep(0)
    return {"async": event}


def graceful(event, context):
    received = []
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    print("installed", flush=True)
    deadline = time.monotonic() + 30
    while not received and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"graceful": bool(received), "signal": received[0] if received else None}


def environment(event, context):
    return {name: os.environ.get(name) for name in event}


def describe(event, context):
    return {
        "request_id": context.request_id,
        "function_name": context.function_name,
        "attempt": context.attempt,
        "remaining_ms": context.remaining_time_ms(),
        "cwd": os.getcwd(),
        "executable": sys.executable,
        "prefix": sys.prefix,
        "loaded": sorted(m for m in ("daemon", "msgspec") if m in sys.modules),
    }


def big_output(event, context):
    sys.stdout.write("x" * event)
    return len(event) if isinstance(event, str) else event


def init(context):
    global initialized
    print(f"initializing {context.request_id}")
    initialized = True


def bad_init(context):
    raise RuntimeError("init failed")


def slow_init(context):
    time.sleep(1000)


def was_initialized(event, context):
    return initialized


def pre_stop(context):
    print(f"pre-stop {context.request_id}", flush=True)


def policies(event, context):
    """The scheduling policy of the worker and of a process it starts."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [os.sched_getscheduler(0), int(child.stdout)]
