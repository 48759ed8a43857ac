"""A deliberately vulnerable static file server (the target of the path-traversal task).

It serves files below --root over HTTP on 127.0.0.1, on a free port that it writes to
--port-file once it listens. The bug is on purpose: the request path is joined to the root
without normalisation or a containment check, so `/../x` reads files outside the root.
"""

from __future__ import annotations

import argparse
import os
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(root: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "TinyFiles/0.1"

        def do_GET(self) -> None:
            requested = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            path = os.path.join(root, requested.lstrip("/"))  # VULNERABLE: no containment check
            if os.path.isdir(path):
                path = os.path.join(path, "index.html")
            try:
                with open(path, "rb") as handle:
                    body = handle.read()
            except OSError:
                self.send_error(404, "not found")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="public")
    parser.add_argument("--port-file", default="port.txt")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(os.path.abspath(args.root)))
    # Write then rename, so a reader never sees a half-written port number.
    with open(args.port_file + ".tmp", "w") as handle:
        handle.write(f"{server.server_address[1]}\n")
    os.replace(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
