"""The one exception type for mistakes a user can fix.

The CLI catches `SlmError` once and prints its message without a traceback; any other exception is
a bug and keeps its traceback.
"""


class SlmError(Exception):
    """A user-facing error: the message says what was wrong (with the value) and what to do."""
