"""What can go wrong on the LLM side; `chatsite.errors` maps each to an HTTP answer.

An instance's own words (paths, GPU state, source lines) are for the log only: an
`InstanceError` carries a short generic `msg` for the client and the instance's text as
`detail`, made safe to log.
"""

NO_INSTANCE = "no chat instance available"

# The generic reasons a client may see; nothing an instance says is passed on.
SERVER_ERROR = "chat server error"
MODEL_NOT_FOUND = "model not found"
REFUSED = "chat server refused the request"
INSTANCE_BUSY = "chat server busy"
UNREACHABLE = "chat server unreachable"
TOO_SLOW = "chat server took too long"
CONNECTION_FAILED = "chat server connection failed"
INVALID_ANSWER = "chat server sent an invalid answer"
UNAUTHORIZED = "chat server refused chatsite's credentials"
ENDED_EARLY = "chat server ended the answer early"
STOPPED = "stopped"  # by /stop: never shown, the stream ends with its ordinary last line

MAX_DETAIL_CHARS = 500


def loggable(text: object, limit: int = MAX_DETAIL_CHARS) -> str:
    """Bound a foreign text and escape what could forge log lines (newlines, controls)."""
    text = str(text)
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def reason_for_status(status: int) -> str:
    """The generic reason for an instance's HTTP error status."""
    if status == 404:
        return MODEL_NOT_FOUND
    if status in (401, 403):
        return UNAUTHORIZED
    if status == 429:
        return INSTANCE_BUSY
    if 400 <= status < 500:
        return REFUSED
    return SERVER_ERROR


class InstanceError(Exception):
    """A chat instance failed; `retryable` when another instance may do better.

    `msg` is what the client may read; `detail` is what the instance said, for the log.
    """

    def __init__(
        self,
        msg: str,
        status: int | None = None,
        retryable: bool = False,
        detail: object = None,
    ) -> None:
        super().__init__(msg)
        self.msg = msg
        self.status = status
        self.retryable = retryable
        self.detail = msg if detail is None else f"{msg}: {loggable(detail)}"


class NoInstanceAvailable(Exception):
    """No instance serving the model had a free slot in time (or none is up)."""

    def __init__(self, msg: str = NO_INSTANCE) -> None:
        super().__init__(msg)


class UnknownModel(Exception):
    """No instance serves the model."""


class InstanceRefused(Exception):
    """An instance refused the request itself (a 4xx): retrying elsewhere will not help."""


class InstanceMisconfigured(Exception):
    """Every instance tried refused chatsite's own credentials: the operator must act."""


class InstanceFailed(Exception):
    """Every instance tried failed before the stream started."""


class QueueFull(Exception):
    """MAX_QUEUE requests already wait for the model."""

    def __init__(self, msg: str = "too many requests are waiting for this model") -> None:
        super().__init__(msg)
