"""``python -m revstore.cli``: the ``revstore`` command without its console script (tests, a bare venv)."""

from __future__ import annotations

from . import main

main()
