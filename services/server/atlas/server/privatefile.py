"""Files that hold a secret: created new, readable by this user only, never through a symlink."""

from __future__ import annotations

import os

PRIVATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
"""O_EXCL: an existing file (or a symlink, even a dangling one) is an error, never reused or followed."""


class PrivateFileError(Exception):
    """The file could not be created; the message names it and says why."""


def create_private_file(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to a new file at ``path``, mode 600; PrivateFileError if it exists or cannot be made."""
    try:
        fd = os.open(path, PRIVATE_FLAGS, 0o600)
    except FileExistsError:
        raise PrivateFileError(f"{os.fspath(path)}: exists already (delete it, or choose another path)") from None
    except OSError as exc:
        raise PrivateFileError(f"{os.fspath(path)}: cannot create it: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)  # whatever the umask
            fh.write(text)
    except BaseException:
        os.unlink(path)
        raise
