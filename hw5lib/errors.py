"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """A mistake in the user's input: the CLI prints the message on one line and exits 2."""


class BadImage(UserError):
    """One image file that cannot be read. A batch skips it; a caller wanting one image stops."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = path
        self.reason = reason  # short, for a one-line summary: "empty file", "truncated", ...


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is (like Ctrl-C's KeyboardInterrupt) so it stops the same
    way: what was written is recorded, nothing is left half-written."""
