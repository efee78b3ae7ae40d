"""The release this code is: the one place it is written.

pyproject.toml reads it (hatch's dynamic version), so the wheel's metadata
and ``revstore.__version__`` cannot differ; modules inside the package
import it from here rather than from the package's ``__init__``, which
would make their import depend on how far ``__init__`` had got.
"""

from __future__ import annotations

__version__ = "0.2.0"
