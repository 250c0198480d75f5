"""What a git checkout says about the app in it: where it comes from, which branch and commit,
which version tag -- what the Sage portal fills into a ``sage.yaml`` that leaves them out.

Every question is one ``git`` command with a timeout and no prompt; a checkout that cannot
answer one (no remote ``origin``, a detached HEAD, no tag) leaves that answer None.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

GIT_TIMEOUT: Final = 10.0
_USERINFO: Final = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@]*@", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Checkout:
    """A git working tree around a file, as far as it answers."""

    root: Path
    url: str | None
    """``git remote get-url origin``, without any user or token in it."""
    branch: str | None
    """The branch checked out (None when HEAD is detached)."""
    commit: str | None
    """The full commit id of HEAD (None before the first commit)."""
    described: str | None
    """``git describe --tags`` (``0.2.1``, ``v0.2.1-3-gabc1234``); None without a tag."""
    directory: str
    """The folder the file is in, relative to ``root`` (``.`` at the root)."""

    @property
    def version(self) -> str | None:
        """The version the latest tag names: ``v0.2.1`` -> ``0.2.1``, commits after it kept
        (``0.2.1-3-gabc1234``)."""
        if self.described is None:
            return None
        text = self.described
        return text[1:] if text[:1] in ("v", "V") and text[1:2].isdigit() else text


def _git(folder: Path, *args: str) -> str | None:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):  # no git installed, or it hangs
        return None
    answer = done.stdout.strip()
    return answer if done.returncode == 0 and answer else None


def without_credentials(url: str) -> str:
    """``https://user:token@host/x.git`` -> ``https://host/x.git``: a remote URL may carry a
    token, which must not end up in a registered app."""
    return _USERINFO.sub(lambda m: m.group("scheme"), url)


def checkout_of(path: str | os.PathLike[str]) -> Checkout | None:
    """The checkout around ``path`` (a file or a folder), or None when it is in none."""
    target = Path(path).resolve()
    folder = target if target.is_dir() else target.parent
    top = _git(folder, "rev-parse", "--show-toplevel")
    if top is None:
        return None
    root = Path(top).resolve()
    url = _git(folder, "remote", "get-url", "origin")
    branch = _git(folder, "symbolic-ref", "--quiet", "--short", "HEAD")
    commit = _git(folder, "rev-parse", "--verify", "--quiet", "HEAD")
    described = _git(folder, "describe", "--tags") if commit else None
    relative = folder.relative_to(root).as_posix() if folder.is_relative_to(root) else "."
    return Checkout(
        root=root,
        url=without_credentials(url) if url else None,
        branch=branch,
        commit=commit,
        described=described,
        directory=relative or ".",
    )


__all__ = ["Checkout", "checkout_of", "without_credentials"]
