"""Hooks and handlers that leave marks, for tests/test_lifecycle.py."""

import os
import time

from fnspool_runtime import Retry


def _mark(what, context):
    # a path from the definition: on Ray the code folder is a copy on the node
    with open(os.environ.get("MARKS", "marks.log"), "a") as f:
        f.write(f"{what} {os.getpid()} {context.request_id or '-'} {context.function_name}\n")


def init(context):
    print(f"initializing in {os.getpid()}")
    _mark("init", context)


def bad_init(context):
    raise RuntimeError("the database is unreachable")


def pre_freeze(context):
    _mark("pre_freeze", context)


def slow_pre_freeze(context):
    _mark("pre_freeze", context)
    time.sleep(2)  # long enough for the next event to arrive meanwhile


def pre_stop(context):
    print("pre-stop: flushing")
    _mark("pre_stop", context)


def hanging_pre_stop(context):
    _mark("pre_stop_hangs", context)
    time.sleep(1000)


def handler(event, context):
    time.sleep(event.get("sleep", 0))
    if context.attempt == 1:  # long enough to be seen running, however busy the machine
        time.sleep(event.get("first_sleep", 0))
    if event.get("hog_mb"):
        hog = bytearray(event["hog_mb"] << 20)
        for i in range(0, len(hog), 4096):
            hog[i] = 1
        time.sleep(5)
    return {"pid": os.getpid()}


def ignore_term(event, context):
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ignoring SIGTERM", flush=True)
    time.sleep(event.get("sleep", 30))
    return "done"


def sleep_then_fail(event, context):
    time.sleep(event.get("sleep", 0))
    raise RuntimeError(f"failed on attempt {context.attempt}")


def third_time_lucky(event, context):
    if context.attempt < 3:
        raise ConnectionError(f"flaky on attempt {context.attempt}")
    return {"attempt": context.attempt}


def spin(event, context):
    print("spinning", flush=True)
    while True:
        pass


def quiet_then_loud(event, context):
    if context.attempt < 3:
        raise ConnectionError("failed without a word")
    print(f"attempt {context.attempt} speaks", flush=True)
    return {"attempt": context.attempt}


def retry_later(event, context):
    if context.attempt == 1:
        raise Retry("not yet", delay=1.5)
    return {"attempt": context.attempt}
