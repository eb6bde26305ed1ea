"""schemathesis's command line with ``ast.parse`` serialised across its worker threads.

Hypothesis describes each ``filter`` lambda from its parsed source. On CPython 3.11 the AST
constructor's recursion depth is kept per interpreter, so two threads parsing at once (the run's
``--workers 2``) can fail one of them with ``SystemError: AST constructor recursion depth mismatch``
(python/cpython#106905): an error of the tool, reported as a "Runtime Error" of whichever operation it
was generating cases for, never of the API. Two workers stay: concurrent requests are what found the
task and comment races.
"""

from __future__ import annotations

import ast
import runpy
import threading
from typing import Any

_parsing = threading.RLock()
_parse = ast.parse


def _serialised_parse(*args: Any, **kwargs: Any) -> Any:
    with _parsing:
        return _parse(*args, **kwargs)


ast.parse = _serialised_parse  # type: ignore[assignment]
runpy.run_module("schemathesis.cli", run_name="__main__", alter_sys=True)
