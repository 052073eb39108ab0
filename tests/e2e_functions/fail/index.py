def handler(event, context):
    raise ValueError(f"bad input {event!r}")


def echo(event, context):
    return event
