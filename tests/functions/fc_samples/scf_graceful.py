# -*- coding: utf8 -*-
# Tencent SCF, "异步执行事件管理" (async event management), 发送终止信号 > 镜像部署 > Python: the
# image-deployment GracefulKiller sample, /work/shared/seeds/000_299018aff17fa9df.txt, verbatim
# but for its indentation, which the seed's copy lost (restored as Python needs it), and these
# comment lines.
from flask import Flask, request
import time
import signal
app = Flask(__name__)

class GracefulKiller:
    kill_now = False
    def __init__(self):
        # Register signal processing function
        signal.signal(signal.SIGTERM, self.graceshutdown)
    def graceshutdown(self, *agrg):
        print("do something before shutdown.")
        self.kill_now = True

@app.route('/event-invoke', methods = ['POST'])
def invoke():
    while not killer.kill_now:
        time.sleep(1)
        print(killer.kill_now)

    print("Graceful shutdown.")
    return("END")

if __name__ == '__main__':
    killer = GracefulKiller()
    app.run(host='0.0.0.0', port=9000)
