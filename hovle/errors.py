"""The one base class of the package's user-input errors.

Every error that means "the input is wrong" (a path, a flag, a data line, a checkpoint) derives from
`HoVLEUserError`; the commands print exactly these (plus a few library errors about paths) as one `error:` line,
while any other exception, a bare `ValueError` from a bug included, keeps its traceback. It is a `ValueError`, so
code that caught the package's errors as `ValueError` before still does.
"""

from __future__ import annotations


class HoVLEUserError(ValueError):
    """A mistake in what the user gave (a path, an option, a data line, a checkpoint), said in one line."""
