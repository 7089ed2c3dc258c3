"""/generate's stream: text completion, or fill-in-the-middle with a suffix."""

from collections.abc import Iterator

from .reply import StreamedReply, ndjson_line


class GenerateReply(StreamedReply):
    """Relay `/api/generate` lines as `{"status": "ok", "response": ...}`."""

    def produce(self) -> Iterator[bytes]:
        pieces = self.pieces
        for line in self.upstream:
            piece = line.get("response")
            if piece:
                pieces.append(piece)
                yield ndjson_line({"status": "ok", "response": piece})
        self.finish(complete=True)
        yield ndjson_line(self.last_line())

    def last_line(self) -> dict:
        return {"status": "ok", "response": "", "finalMsg": "".join(self.pieces)}
