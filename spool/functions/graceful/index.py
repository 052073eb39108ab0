# -*- coding: utf8 -*-
import signal
import time


class GracefulKiller:
    kill_now = False

    def __init__(self):
        signal.signal(signal.SIGTERM, self.graceshutdown)

    def graceshutdown(self, *args):
        print("do something before shutdown.")
        self.kill_now = True


def main_handler(event, context):
    killer = GracefulKiller()
    while not killer.kill_now:
        time.sleep(1)
        print(killer.kill_now)
    print("Graceful shutdown.")
    return "END"
