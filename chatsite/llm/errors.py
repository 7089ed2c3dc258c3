"""What can go wrong on the LLM side; `chatsite.errors` maps each to an HTTP answer."""

NO_INSTANCE = "no chat instance available"


class InstanceError(Exception):
    """A chat instance failed; `retryable` when another instance may do better."""

    def __init__(self, msg: str, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(msg)
        self.msg = msg
        self.status = status
        self.retryable = retryable


class NoInstanceAvailable(Exception):
    """No instance serving the model had a free slot in time (or none is up)."""

    def __init__(self, msg: str = NO_INSTANCE) -> None:
        super().__init__(msg)


class UnknownModel(Exception):
    """No instance serves the model."""


class InstanceRefused(Exception):
    """An instance refused the request itself (a 4xx): retrying elsewhere will not help."""


class InstanceFailed(Exception):
    """Every instance tried failed before the stream started."""


class QueueFull(Exception):
    """MAX_QUEUE requests already wait for the model."""

    def __init__(self, msg: str = "too many requests are waiting for this model") -> None:
        super().__init__(msg)
