"""Handlers for tests/test_ray.py, run by fnspool python workers beside their Ray actors."""

import os
import time

from fnspool_runtime import Retry

inits = 0


def init(context):
    global inits
    inits += 1
    print(f"initializing {context.request_id}", flush=True)


def where(event, context):
    print(f"running {event} in {os.getcwd()}", flush=True)
    return {"cwd": os.getcwd(), "inits": inits, "pid": os.getpid()}


def flaky(event, context):
    if context.attempt < 3:
        raise ConnectionError(f"flaky on attempt {context.attempt}")
    print(f"attempt {context.attempt} speaks", flush=True)
    return {"attempt": context.attempt}


def later(event, context):
    if context.attempt == 1:
        raise Retry("not yet", delay=1.5)
    return {"attempt": context.attempt}


def slow(event, context):
    print(f"slow start {context.attempt}", flush=True)
    if context.attempt == 1:  # a run again after a daemon's kill -9 ends at once
        time.sleep(event.get("sleep", 30))
    return "slept"


def pre_stop(context):
    print("pre-stop: flushing", flush=True)


def held(event, context):
    print("holding", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(event["gate"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"released": os.path.exists(event["gate"])}
