"""Start an http function's server in a network namespace of its own, and hand the daemon sockets
made inside it.

Run as `unshare --user --net --map-root-user PYTHON -I -S netns.py FD -- SERVER...`: unshare
makes the namespaces (root in its own user namespace, so no privilege is needed), this script
brings the loopback up, leaves a small socket maker behind on FD (a Unix socket pair with the
daemon) and execs the server, which keeps this process's pid. Each byte the daemon sends on FD is
answered with a new unconnected TCP socket of the namespace (SCM_RIGHTS); the daemon connects it
to 127.0.0.1:PORT itself, so a server bound to a fixed port (9000, as FC's and SCF's samples) is
reached without a route, an address or a copy of the bytes, and several such servers run at once.

Standard library only, like bootstrap.py; `-S` spares the site import (about a third of the
interpreter's start-up).
"""

import fcntl
import os
import signal
import socket
import struct
import sys

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """Bring `lo` up: a new network namespace starts with it down and 127.0.0.1 unassigned."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def serve_sockets(fd: int) -> None:
    """Answer each request byte on `fd` with a new TCP socket (b"6": IPv6), until the daemon
    closes its end."""
    channel = socket.socket(fileno=fd)
    while True:
        asked = channel.recv(16)
        if not asked:
            return
        for kind in asked:
            family = socket.AF_INET6 if kind == ord("6") else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as made:
                socket.send_fds(channel, [b"s"], [made.fileno()])


def leave_socket_maker(fd: int) -> None:
    """Fork the socket maker off, detached twice so that it is never the server's child (the
    server is not asked to reap it); it stays in the server's process group, so it is frozen,
    thawed and killed with it, and it ignores the SIGTERM of a graceful stop."""
    if os.fork() != 0:
        os.wait()
        return
    if os.fork() != 0:
        os._exit(0)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):  # the server's output pipe must close when the server exits
        os.dup2(null, target)
    try:
        serve_sockets(fd)
    finally:
        os._exit(0)


def main() -> None:
    """netns.py FD -- SERVER ARGS..."""
    fd, argv = int(sys.argv[1]), sys.argv[3:]
    try:
        loopback_up()
    except OSError as exc:
        sys.stderr.write(f"fnspool: cannot bring up the namespace's loopback: {exc}\n")
        sys.exit(126)
    leave_socket_maker(fd)
    os.close(fd)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
