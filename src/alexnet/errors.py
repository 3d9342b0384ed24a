"""The one exception type the command line turns into a one-line message and exit code 2, and how a
message shows a value."""


class UserError(Exception):
    """Bad input from the user: the message names the file or value and the reason."""


class Terminated(BaseException):
    """SIGTERM outside the training loop's own handling: the command unwinds (its cleanup runs,
    partial work is kept where it can be resumed) and exits 143. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` swallows it."""


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for a message that names a value the user gave
    (which may be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...)"
