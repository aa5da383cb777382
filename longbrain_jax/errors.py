"""The one error type for bad user input.

Every reader and validator raises `InputError` naming the offending file (or table
field) and the problem, so the CLI can print one line and exit with code 2.
"""

from __future__ import annotations

import os


class InputError(ValueError):
    """Bad input: `where` names the file or field, `problem` says what is wrong.

    **Arguments:**

    - `where`: the file path (or `file:row/column`) the problem was found in.
    - `problem`: a short description a user can act on.
    """

    def __init__(self, where: str | os.PathLike, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")
