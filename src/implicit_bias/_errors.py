"""The exception types that user-facing errors raise.

The CLI turns a :class:`UserInputError` into a single line on stderr and exit
code 2, :class:`ChunksFailed` into one line and exit code 1; the Python API
lets them propagate so notebooks see a normal exception.
"""

from __future__ import annotations

#: longest message an error may print: a value from a hostile or careless input (a
#: YAML alias bomb, a 10⁶-element list) is cut, never echoed in full
MAX_MESSAGE = 2000


def one_line(message: object) -> str:
    """``message`` on one line, cut to :data:`MAX_MESSAGE` characters."""
    text = " ".join(str(message).split())
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 30] + f" … [{len(text) - MAX_MESSAGE + 30} characters cut]"
    return text


class UserInputError(ValueError):
    """Bad input from the user: a config key, a value, a file.

    The message is one line and names the offending key or file.
    """

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class ChunksFailed(RuntimeError):
    """Some chunks of a sweep failed (locally or on Dask); the finished ones are kept.

    The CLI prints the message as one line and exits 1; running the same
    command again redoes only the failed chunks.
    """

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class ChunkWarning(UserWarning):
    """A chunk in a results folder was damaged or misplaced; it is removed and redone."""


#: errno values of a full disk, a file-size limit (``ulimit -f``) and a full quota
_DISK_FULL_ERRNOS = (28, 27, 122)
_DISK_FULL_TEXT = ("No space left", "File too large", "Disk quota", "errno = 28", "errno = 27")


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (an ``OSError``, or h5py's text of one) says the disk is full."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS:
            return True
        if any(t in str(err) for t in _DISK_FULL_TEXT):
            return True
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return False


def disk_full(err: BaseException, where: object) -> UserInputError:
    """The one-line error for a full disk while writing in ``where``."""
    return UserInputError(
        f"disk full while writing in {where} ({type(err).__name__}: "
        f"{' '.join(str(err).split())[:200]}); nothing finished was lost: free some space "
        "(or raise the file-size limit) and run the same command again"
    )
