"""/generate's stream: text completion, or fill-in-the-middle with a suffix."""

from collections.abc import Iterator

from .reply import StreamedReply


class GenerateReply(StreamedReply):
    """Relay a completion's text as `{"status": "ok", "response": ...}` lines."""

    def produce(self) -> Iterator[dict | list[dict]]:
        pieces = self.pieces
        for batch in self.upstream.batches():
            out = []  # the pieces that came in one read go out in one write
            for _, piece in batch:  # a completion has text only
                pieces.append(piece)
                out.append({"status": "ok", "response": piece})
            if out:
                yield out[0] if len(out) == 1 else out
        self.finish(complete=True)
        yield self.last_line()

    def last_line(self) -> dict:
        return {"status": "ok", "response": "", "finalMsg": "".join(self.pieces)}
