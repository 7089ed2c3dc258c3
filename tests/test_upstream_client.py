"""The upstream client's reading of a streamed body, against a scripted HTTP server.

`InstanceStream.batches()` groups the lines that each read of the body completed; these
tests script the exact bytes and chunk boundaries an upstream sends, which the development
chat instance cannot do. Each runs over both transports: urllib3 (the Flask dev server's
threads, https instances) and geventhttpclient (a gevent worker's http instances, here on
this thread's own gevent hub).
"""

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import gevent
import pytest

import chatsite.llm.client
from chatsite.llm.client import InstanceClient
from chatsite.llm.errors import UNREACHABLE, InstanceError
from chatsite.llm.gevent_stream import GeventStreamResponse


@pytest.fixture(autouse=True, params=["urllib3", "gevent"])
def transport(request, monkeypatch):
    """The way streamed POSTs go: as in a gevent worker, or as in the dev server."""
    monkeypatch.setattr(chatsite.llm.client, "gevent_active", lambda: request.param == "gevent")
    return request.param


class Scripted:
    """An HTTP server answering every POST with the next scripted body, chunk by chunk
    (waiting, at an `Event` among the chunks, until it is set)."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, list[bytes]]] = []  # (framing, pieces)
        self.connections: set[int] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                outer.connections.add(self.client_address[1])
                self.rfile.read(int(self.headers["Content-Length"]))
                framing, pieces = outer.bodies.pop(0)
                self.send_response(503 if framing == "error" else 200)
                self.send_header("Content-Type", "application/x-ndjson")
                if framing == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for piece in pieces:
                        if isinstance(piece, threading.Event):  # until the test says so
                            piece.wait(5)
                            continue
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    body = b"".join(pieces)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    server = Scripted()
    yield server
    server.stop()


def open_stream(scripted, pieces, framing="chunked", max_line=1024):
    scripted.bodies.append((framing, pieces))
    client = InstanceClient(scripted.url, read_timeout=5, max_line=max_line)
    return client, client.stream("/api/chat", {"model": "m", "messages": []})


def test_each_transport_is_the_one_used(scripted, transport):
    _, stream = open_stream(scripted, [b'{"done": true}\n'])
    assert isinstance(stream.response, GeventStreamResponse) == (transport == "gevent")
    assert list(stream) == [{"done": True}]


def test_each_read_is_one_batch_whatever_the_line_boundaries(scripted):
    sent_3, sent_4 = threading.Event(), threading.Event()  # the server waits for the reader
    pieces = [b'{"n": 1}\n{"n": 2}\n', sent_3, b'{"n":', b' 3}\n{"n": 4', sent_4]
    _, stream = open_stream(scripted, [*pieces, b'}\n{"done": true}\n'])
    batches = stream.batches()
    assert [line["n"] for line in next(batches)] == [1, 2]
    sent_3.set()
    assert [line["n"] for line in next(batches)] == [3]
    sent_4.set()
    assert [line.get("n", "done") for line in next(batches)] == [4, "done"]


def test_reading_stops_at_done_and_the_connection_is_reused(scripted):
    client, stream = open_stream(scripted, [b'{"n": 1}\n{"done": true}\n', b'{"n": 2}\n'])
    assert [line.get("n") for line in stream] == [1, None]
    stream.release()
    scripted.bodies.append(("chunked", [b'{"done": true}\n']))
    again = client.stream("/api/chat", {"model": "m", "messages": []})
    assert list(again) == [{"done": True}]
    assert len(scripted.connections) == 1  # the first answer was read to its end


def test_lines_before_an_invalid_one_still_come_out(scripted):
    _, stream = open_stream(scripted, [b'{"n": 1}\n{"n": 2}\nnot json\n{"n": 3}\n'])
    batches = stream.batches()
    assert [line["n"] for line in next(batches)] == [1, 2]
    with pytest.raises(InstanceError) as error:
        next(batches)
    assert error.value.detail == "chat server sent an invalid answer: a line that is not JSON"


def test_an_error_line_ends_the_stream(scripted):
    _, stream = open_stream(scripted, [b'{"n": 1}\n', b'{"error": "out of memory"}\n'])
    lines = iter(stream)
    assert next(lines) == {"n": 1}
    with pytest.raises(InstanceError) as error:
        next(lines)
    assert error.value.detail == "chat server error: out of memory"


def test_an_oversized_line_is_refused(scripted):
    _, stream = open_stream(scripted, [b'{"n": 1}\n{"n": "' + b"x" * 200, b"x" * 200], max_line=256)
    lines = iter(stream)
    assert next(lines) == {"n": 1}
    with pytest.raises(InstanceError) as error:
        next(lines)
    assert error.value.detail == "chat server sent an invalid answer: an oversized line"


def test_a_body_with_a_length_instead_of_chunks(scripted):
    _, stream = open_stream(scripted, [b'{"n": 1}\n{"done": true}'], framing="length")
    assert list(stream) == [{"n": 1}, {"done": True}]


def test_a_body_cut_short_is_a_connection_failure():
    """The server closes the connection in the middle of a chunk."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(
            b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{"n": 1}\n\r\n20\r\n{"n":'
        )
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        stream = InstanceClient(f"http://127.0.0.1:{port}", read_timeout=5).stream(
            "/api/chat", {"model": "m", "messages": []}
        )
        lines = iter(stream)
        assert next(lines) == {"n": 1}
        with pytest.raises(InstanceError) as error:
            next(lines)
        assert error.value.msg == "chat server connection failed"
    finally:
        listener.close()


def test_a_body_that_ends_before_done_is_a_failure(scripted):
    _, stream = open_stream(scripted, [b'{"n": 1}\n'])
    lines = iter(stream)
    assert next(lines) == {"n": 1}
    with pytest.raises(InstanceError) as error:
        next(lines)
    assert error.value.msg == "chat server ended the answer early"


def test_an_error_status_is_an_instance_error_with_the_servers_words(scripted):
    scripted.bodies.append(("error", [b'{"error": "out of memory"}']))
    client = InstanceClient(scripted.url, read_timeout=5)
    with pytest.raises(InstanceError) as error:
        client.stream("/api/chat", {"model": "m", "messages": []})
    assert (error.value.status, error.value.retryable) == (503, True)
    assert "HTTP 503: out of memory" in error.value.detail
    scripted.bodies.append(("chunked", [b'{"done": true}\n']))  # the next call goes ahead
    assert list(client.stream("/api/chat", {"model": "m", "messages": []})) == [{"done": True}]


def test_an_instance_that_refuses_connections_is_unreachable():
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(InstanceError) as error:
        InstanceClient(f"http://127.0.0.1:{port}").stream("/api/chat", {"model": "m"})
    assert (error.value.msg, error.value.retryable) == (UNREACHABLE, True)
    assert error.value.detail.endswith("ConnectionError")


def test_an_instance_that_stops_sending_is_cut_after_the_read_timeout(scripted, transport):
    """gevent: the stream's one watchdog shuts the connection; urllib3: the socket's time-out."""
    never = threading.Event()
    scripted.bodies.append(("chunked", [b'{"n": 1}\n', never]))
    client = InstanceClient(scripted.url, read_timeout=0.3)
    lines = iter(client.stream("/api/chat", {"model": "m", "messages": []}))
    try:
        assert next(lines) == {"n": 1}
        with pytest.raises(InstanceError) as error:
            next(lines)
    finally:
        never.set()
    assert error.value.msg == "chat server connection failed"
    if transport == "gevent":
        assert error.value.detail.endswith("read timed out")


@pytest.mark.parametrize("transport", ["gevent"], indirect=True)  # a thread is not woken
def test_a_stop_from_another_greenlet_ends_the_read_at_once(scripted):
    """Under gevent, /stop closes the stream under its reader, which ends as stopped."""

    never = threading.Event()
    scripted.bodies.append(("chunked", [b'{"n": 1}\n', never]))
    client = InstanceClient(scripted.url, read_timeout=30)
    stream = client.stream("/api/chat", {"model": "m", "messages": []})
    lines = iter(stream)
    try:
        assert next(lines) == {"n": 1}
        gevent.spawn_later(0.1, lambda: (stream.cancel(), stream.close()))
        with pytest.raises(InstanceError) as error:
            next(lines)
    finally:
        never.set()
    assert error.value.msg == "stopped"
    assert stream.response.socket() is None  # the connection was dropped, not pooled
