"""The exceptions Nixie raises; every one derives from `NixieError`.

NixieError
├── InvalidInput       a value, header or payload is malformed (400)
├── BodyTooLarge       a request body exceeds what any valid input needs (413)
├── BodyTimeout        a request body did not arrive in time (408)
├── UnknownKey         no such counter, or it was deleted (404)
├── OutOfRange         a result would leave the signed 64-bit range (409)
├── IdempotencyConflict an Idempotency-Key was used for another request (422)
├── Unavailable        too few nodes answered in time for the request (503)
├── StorageError       the data dir cannot be opened or written
├── Unauthorized       a cluster request without the right secret (401)
└── PeerError          an exchange with a peer failed or made no sense
"""


class NixieError(Exception):
    """Root of every error Nixie raises on purpose."""


class InvalidInput(NixieError):
    """Refuse a malformed input; the message names the field and the problem."""


class BodyTooLarge(NixieError):
    """Refuse a request body longer than any valid input."""


class BodyTimeout(NixieError):
    """Refuse a request whose body did not arrive in full in time."""


class UnknownKey(NixieError):
    """Report a key that names no live counter."""

    def __init__(self, key: str) -> None:
        # A path may hold any character; the message shows unprintable
        # ones escaped rather than sending them back raw.
        shown = key if key.isprintable() else key.encode("unicode_escape").decode()
        super().__init__(f"Unknown key {shown}")
        self.key = key


class OutOfRange(NixieError):
    """Refuse a write whose result would leave the signed 64-bit range."""


class IdempotencyConflict(NixieError):
    """Refuse a request whose Idempotency-Key was used for a different one."""


class Unavailable(NixieError):
    """Report that too few nodes answered in time to serve the request."""


class StorageError(NixieError):
    """Report a data dir that cannot be opened, locked or written."""


class Unauthorized(NixieError):
    """Refuse a cluster request that lacks the right secret."""


class PeerError(NixieError):
    """Report an exchange with a peer that failed or made no sense."""
