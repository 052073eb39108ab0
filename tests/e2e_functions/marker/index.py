import os


def handler(event, context):
    fd = os.open(event["marker"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{context.request_id}\n".encode())
    finally:
        os.close(fd)
    return event.get("i")
