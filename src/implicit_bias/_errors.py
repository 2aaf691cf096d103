"""The one exception type that user-facing input errors raise.

The CLI turns it into a single line on stderr and exit code 2; the Python API
lets it propagate so notebooks see a normal exception.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input from the user: a config key, a value, a file.

    The message is one line and names the offending key or file.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
