import time


def handler(event, context):
    time.sleep(event.get("sleep", 1))
    return "slept"
