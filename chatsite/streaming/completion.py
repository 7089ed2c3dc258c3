"""/generate's stream: text completion, or fill-in-the-middle with a suffix."""

from collections.abc import Iterator

from .reply import StreamedReply, ndjson_line


class GenerateReply(StreamedReply):
    """Relay `/api/generate` lines as `{"status": "ok", "response": ...}`."""

    def produce(self) -> Iterator[bytes]:
        pieces = self.pieces
        for batch in self.upstream.batches():
            out = []  # the lines that came in one read go out in one write
            for line in batch:
                piece = line.get("response")
                if piece:
                    pieces.append(piece)
                    out.append(ndjson_line({"status": "ok", "response": piece}))
            if out:
                yield out[0] if len(out) == 1 else b"".join(out)
        self.finish(complete=True)
        yield ndjson_line(self.last_line())

    def last_line(self) -> dict:
        return {"status": "ok", "response": "", "finalMsg": "".join(self.pieces)}
