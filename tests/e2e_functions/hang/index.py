import subprocess
import time


def handler(event, context):
    subprocess.Popen(["sleep", "1000"])  # a grandchild that must die with its instance
    print("hanging", flush=True)
    time.sleep(1000)
