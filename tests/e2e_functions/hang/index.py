import subprocess
import time


def handler(event, context):
    child = subprocess.Popen(["sleep", "1000"])  # a grandchild that must die with its instance
    print(f"hanging; grandchild {child.pid}", flush=True)
    time.sleep(1000)
