import os


def handler(event, context):
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    print(f"request {context.request_id}, attempt {context.attempt}")
    context.logger.info("%d ms left", context.remaining_time_ms())
    return {"message": f"{os.environ.get('GREETING', 'Hello')}, {name}!"}
