"""One exception type for every user-facing mistake.

A `FinlightError` carries a one-line message that names the culprit (file, line, key, checkpoint) and
what to do about it. The CLI prints it without a traceback and exits non-zero.
"""


class FinlightError(Exception):
    """A problem with the user's input (data, config, checkpoint), not a bug in finlight."""
