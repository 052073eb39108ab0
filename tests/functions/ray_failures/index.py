"""Handlers for tests/test_ray_failures.py, run by fnspool python workers beside Ray actors."""

import os
import time


def once(event, context):
    """Sleep on the first attempt; note each completion in the marker file the event names."""
    print(f"slow start {context.attempt} pid {os.getpid()}", flush=True)
    if context.attempt == 1:
        time.sleep(event.get("sleep", 60))
    with open(event["marker"], "a") as f:
        f.write(f"{context.request_id} {context.attempt}\n")
    return {"attempt": context.attempt}


def quick(event, context):
    return {"ran": True}
