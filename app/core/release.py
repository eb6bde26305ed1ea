"""A fingerprint of the running code, for what one release stores and another must not read.

During a rolling deploy the processes of two releases share one Valkey. An answer a cache stored
in Valkey (``app/core/stamped.py``) is rendered by the code that stored it: a feed page whose verbs
the other release phrases differently, a task page whose items have another shape. Its stamp says
whether the data changed, not whether the code did. So the stored answers are named after the code
(``StampedCache``): each release reads only its own, and a change nobody remembered to declare still
counts. A hand-kept version number would count only the changes someone remembered to bump it for.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import app


def code_fingerprint(root: Path) -> str:
    """A short digest of every Python module under ``root``, names and contents, in a fixed order.
    The generated queries (``app/db``) are among them, so a query's change counts too.

    A module is its source (``.py``), or its compiled file where an install ships no source
    (``compileall -b``: ``.pyc`` beside where the ``.py`` was); the caches of ``__pycache__`` differ
    between machines of one release, and never count. A file that cannot be read (an editor's lock,
    a dangling link) does not count either: the process must start all the same."""
    digest = hashlib.blake2b(digest_size=6)
    sources = set(root.rglob("*.py"))
    sourceless = {
        path
        for path in root.rglob("*.pyc")
        if path.parent.name != "__pycache__" and path.with_suffix(".py") not in sources
    }
    for path in sorted(sources | sourceless):
        try:
            text = path.read_bytes()
        except OSError:
            continue
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(text)
        digest.update(b"\0")
    return digest.hexdigest()


CODE_FINGERPRINT = code_fingerprint(Path(app.__file__).parent)
"""The fingerprint of this process's ``app`` package, read once at import (before any fork)."""
