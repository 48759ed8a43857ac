"""Run inside a weak probe holder's namespaces, argv = [pid flag, net flag].

ppid 0 means "forked into a child PID namespace" (the parent is outside it); with a network
namespace only `lo` exists and loopback connects.
"""

import os
import socket
import sys


def main() -> None:
    if sys.argv[1] == "pid":
        assert os.getppid() == 0, "not in a child pid namespace"
    if sys.argv[2] == "net":
        assert [name for _, name in socket.if_nameindex()] == ["lo"], socket.if_nameindex()
        server = socket.create_server(("127.0.0.1", 0))
        socket.create_connection(server.getsockname(), timeout=2).close()
    print("ok")


if __name__ == "__main__":
    main()
