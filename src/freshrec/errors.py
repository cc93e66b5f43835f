"""One exception hierarchy for freshrec: callers catch `FreshrecError`; messages name the field, the value and
what to do about it."""


class FreshrecError(Exception):
    """Base class of every error freshrec raises on purpose."""


class ConfigError(FreshrecError, ValueError):
    """A configuration value or command-line option is invalid."""


class SourceError(FreshrecError):
    """A source cannot be opened or read as a whole (a single bad record is a rejection, not an error)."""


class CapacityError(FreshrecError):
    """A bounded structure is full and its policy forbids eviction."""
