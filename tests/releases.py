"""Earlier revstore releases, built from this repository's history for two-release tests.

A release is ``git archive`` of its tag (or, in a clone without tags, of its
known commit), installed with its own dependencies into its own venv.  Both
are cached in ``.cache/releases/<commit>-py<X.Y>-<recipe>/`` (git-ignored) so CI pays
the build once per machine.  A release that cannot be found is a test
failure, never a skip: fetch the history (``git fetch --tags --unshallow``).
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import revstore
from revstore.window import release_key

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "releases"

#: Commits of published releases, for clones that lack the tags.  Add each
#: new release here when it is tagged.
KNOWN_COMMITS = {
    "0.1.0": "0ca4ddcf25121f37a94c8c3d9c8fbfdeff814aa4",
    "0.2.0": "70f301c0f7986b46981f99351ed1bf45eee234e7",
}


#: What a worker of the release needs besides the package itself (the Redis
#: transport imports ``packaging``).  Part of the cache key.
EXTRAS = ("redis", "packaging")


@dataclass(frozen=True)
class Release:
    version: str
    commit: str
    python: Path  # the interpreter of its venv
    tests: Path  # its tests/ folder: its own workerapp

    @property
    def cli(self) -> Path:
        return self.python.with_name("revstore")


def _git(*args: str) -> str:
    result = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=120)
    return result.stdout.strip() if result.returncode == 0 else ""


def _tagged() -> dict[str, str]:
    tags = {}
    for tag in _git("tag", "--list", "v*").split():
        if re.fullmatch(r"v\d+\.\d+\.\d+", tag):
            tags[tag[1:]] = _git("rev-parse", "--verify", "--quiet", f"{tag}^{{commit}}")
    return {version: commit for version, commit in tags.items() if commit}


def previous_version() -> str:
    """The newest release older than this checkout's: the one a fleet upgrades from."""
    known = {**KNOWN_COMMITS, **_tagged()}
    older = [v for v in known if release_key(v) < release_key(revstore.__version__)]
    if not older:
        pytest.fail(f"no release older than {revstore.__version__} is tagged or known", pytrace=False)
    return max(older, key=release_key)


def commit_of(version: str) -> str:
    """The tag's commit, else the known one; fail loudly if this clone has neither."""
    commit = _tagged().get(version)
    if commit:
        return commit
    known = KNOWN_COMMITS.get(version)
    if known and _git("cat-file", "-t", known) == "commit":
        return known
    pytest.fail(f"revstore {version}: neither tag v{version} nor commit {known} is in this clone; "
                "run `git fetch --tags --unshallow`", pytrace=False)


def _before(text: str, what: str) -> str:
    """Release 0.2.0's commit, checked to predate the one that added ``text`` to revstore/schema.py.

    Every schema change since 0.2.0 is tested against 0.2.0's workers, the
    ones a fleet really runs while it upgrades; one release is one build.
    """
    added = _git("log", "--format=%H", "-1", "-S", text, "--", "revstore/schema.py")
    if not added:
        pytest.fail(f"the commit that added {what} is not in this clone: run `git fetch --unshallow`", pytrace=False)
    released = commit_of("0.2.0")
    if subprocess.run(["git", "-C", str(ROOT), "merge-base", "--is-ancestor", released, added]).returncode:
        pytest.fail(f"{what} came before release 0.2.0: test it against an older release", pytrace=False)
    return released


def before_name_rules() -> str:
    """The release whose revstore knew no ``name`` kind: the 0.2.0 workers deployed before issue 24."""
    return _before('KINDS = ("task", "stamp", "root")', "the name kind")


def before_audit() -> str:
    """The release whose revstore had no audit table: the 0.2.0 workers deployed when its expand step runs."""
    return _before('f"{prefix}audit"', "the audit table")


def build(version: str, commit: str | None = None) -> Release:
    """Install ``version`` (or that release's code at ``commit``) into its cached venv (once),
    with this venv's dependency versions."""
    commit = commit or commit_of(version)
    recipe = hashlib.sha256(" ".join(EXTRAS).encode()).hexdigest()[:6]
    home = CACHE / f"{commit[:12]}-py{sys.version_info.major}.{sys.version_info.minor}-{recipe}"
    release = Release(version, commit, home / "venv" / "bin" / "python", home / "src" / "tests")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{home.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time, even across pytest sessions
        if (home / "ready").exists():
            return release
        shutil.rmtree(home, ignore_errors=True)
        src = home / "src"
        src.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit],
                                 capture_output=True, check=True, timeout=120).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True, timeout=120)
        subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True, timeout=300)
        # the same versions of Celery, SQLAlchemy, … as this venv: the difference under test is revstore's
        freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                                capture_output=True, text=True, check=True, timeout=120).stdout
        constraints = home / "constraints.txt"
        constraints.write_text("\n".join(line for line in freeze.splitlines() if not line.startswith("revstore")))
        subprocess.run([str(release.python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-c", str(constraints), f"{src}[postgres]", *EXTRAS], check=True, timeout=900)
        (home / "ready").write_text(version)
    return release
