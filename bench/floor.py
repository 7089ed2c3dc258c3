"""The gevent floor: the leanest relay of /chat that gevent allows, to measure chatsite against.

Raw gevent sockets, nothing else: accept ``POST /chat {"model", "messages", "options", ...}``
on keep-alive connections, forward it to the upstream's ``/api/chat`` (one keep-alive upstream
connection per client connection), decode the chunked NDJSON answer, parse and re-encode each
line with orjson as chatsite's ``{"status": "ok", "msg": ..., "done": false}`` and write it as
one chunk, then the final ``done`` line with ``fullMsg``. No Flask, gunicorn, requests, auth,
database, timeouts or error handling beyond dropping the connection. The same work per token
as chatsite does, and no more: the floor of CPU per token on this machine.

Run: ``python bench/floor.py --port P --upstream UPSTREAM_PORT`` (prints ``ready P``).
"""

import argparse
import sys

import orjson
from gevent import socket
from gevent.server import StreamServer

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def read_head(rfile) -> dict[bytes, bytes] | None:
    """The header lines after the start line, lower-cased names; None at end of stream."""
    headers = {}
    while True:
        line = rfile.readline(65537)
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            return headers
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()


def relay(upstream_port: int):
    def handle(client: socket.socket, _address: tuple) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rfile = client.makefile("rb")
        up = up_file = None
        try:
            while rfile.readline(65537) and (headers := read_head(rfile)) is not None:
                request = orjson.loads(rfile.read(int(headers.get(b"content-length", 0))))
                body = orjson.dumps(
                    {
                        "model": request["model"],
                        "messages": request["messages"],
                        "options": request.get("options") or {},
                        "stream": True,
                    }
                )
                if up is None:
                    up = socket.create_connection(("127.0.0.1", upstream_port))
                    up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    up_file = up.makefile("rb")
                up.sendall(
                    b"POST /api/chat HTTP/1.1\r\nHost: upstream\r\nContent-Type: "
                    b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                up_file.readline()  # status line: the bench upstream answers 200
                read_head(up_file)  # chunked, as Ollama answers
                client.sendall(HEAD)
                pieces, buffer = [], b""
                while (size := int(up_file.readline().split(b";")[0], 16)) > 0:
                    buffer += up_file.read(size)
                    up_file.readline()  # the CRLF after the chunk's data
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        data = orjson.loads(line)
                        piece = data["message"]["content"]
                        if piece:
                            pieces.append(piece)
                            out = orjson.dumps({"status": "ok", "msg": piece, "done": False})
                            client.sendall(b"%x\r\n%s\n\r\n" % (len(out) + 1, out))
                read_head(up_file)  # the (empty) trailer
                out = orjson.dumps(
                    {"status": "ok", "msg": "", "fullMsg": "".join(pieces), "done": True}
                )
                client.sendall(b"%x\r\n%s\n\r\n0\r\n\r\n" % (len(out) + 1, out))
        except OSError:
            pass
        finally:
            for sock in (up, client):
                if sock is not None:
                    sock.close()

    return handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", type=int, required=True)
    args = parser.parse_args()
    server = StreamServer(("127.0.0.1", args.port), relay(args.upstream), backlog=4096)
    server.start()
    sys.stdout.write(f"ready {server.server_port}\n")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
