"""The trust model's checks (docs/security.md): what the daemon trusts must be the administrator's.

A trusted folder or file is owned by the daemon's user or root (as sshd's StrictModes judges
them), writable by nobody else, and no symbolic link; a folder the group drops files into may be
group-writable only with the sticky bit, and never world-writable. The folders above the spool
may be writable by others only with the sticky bit (/tmp): then none but the owner of the spool
may rename or remove it.
"""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import stat
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from daemon.errors import FnspoolError
from daemon.functions import Catalog, DefinitionError, FunctionDef

log = logging.getLogger(__name__)

MAX_NAMED = 8  # problems named in one message; the rest are counted


class Problem(NamedTuple):
    """One path that breaks the trust model, and the command that fixes it ("" when none)."""

    path: Path
    what: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.path} {self.what}"


def trusted(path: Path, uid: int | None = None) -> list[Problem]:
    """A folder or file only the administrator may change (nothing when it does not exist)."""
    try:
        return _judge(path, os.lstat(path), _uid(uid))
    except FileNotFoundError:
        return []


def _judge(path: Path, st: os.stat_result, me: int) -> list[Problem]:
    if stat.S_ISLNK(st.st_mode):
        return [Problem(path, "is a symbolic link: put the folder or file itself there")]
    problems = _owner(path, st, me)
    loose = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if loose:
        who = "world" if loose & stat.S_IWOTH else "group"
        problems.append(Problem(path, f"(mode {_mode(st)}) is {who}-writable", "chmod go-w"))
    return problems


def drop_folder(path: Path, uid: int | None = None) -> list[Problem]:
    """A folder the spool's group drops files into (incoming/, control/, tmp/)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return []
    if stat.S_ISLNK(st.st_mode):
        return [Problem(path, "is a symbolic link: put the folder itself there")]
    problems = _owner(path, st, _uid(uid))
    if st.st_mode & stat.S_IWOTH:
        problems.append(Problem(path, f"(mode {_mode(st)}) is world-writable", "chmod o-w"))
    if st.st_mode & stat.S_IWGRP and not st.st_mode & stat.S_ISVTX:
        what = f"(mode {_mode(st)}) is group-writable without the sticky bit"
        problems.append(Problem(path, what, "chmod +t"))
    return problems


def above(root: Path, uid: int | None = None) -> list[Problem]:
    """The folders above the spool (its real path's, and those holding a link on the way)."""
    me = _uid(uid)
    problems = []
    for folder in sorted(_folders_above(root)):
        st = os.stat(folder)
        problems += _owner(folder, st, me)
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            what = f"(mode {_mode(st)}), above the spool, lets others rename it"
            problems.append(Problem(folder, what, "chmod go-w"))
    return problems


def entries(folder: Path, uid: int | None = None) -> list[Problem]:
    """Each file or folder directly in `folder` (journal/, run/) is trusted."""
    if os.path.islink(folder):
        return []
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [p for name in names for p in trusted(folder / name, uid)]


def tree(folder: Path, uid: int | None = None) -> list[Problem]:
    """Everything under `folder` (functions/, a code folder) is trusted. Links below its top
    level (a virtualenv's) are allowed and not followed: only the administrator could make them."""
    if os.path.islink(folder):
        return []  # never walked through: `trusted` says what is wrong with it
    me = _uid(uid)
    problems = []
    for top, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            path = Path(top, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISLNK(st.st_mode) or top == str(folder):
                problems += _judge(path, st, me)
    return problems


def definition(function: FunctionDef, uid: int | None = None) -> list[Problem]:
    """A loaded definition: its folder, its file and its code folder (wherever that lies)."""
    path = Path(function.path)
    code = path.parent / (function.code or function.name)  # as written: a link is refused
    return [*trusted(path.parent, uid), *trusted(path, uid), *trusted(code, uid), *tree(code, uid)]


def screen(loaded: Catalog, previous: Catalog) -> Catalog:
    """Move each definition of `loaded` whose file or code others may change into its errors;
    return `previous` without them (their code may have changed: no last good one is kept)."""
    refused = set()
    for name, function in list(loaded.functions.items()):
        problems = definition(function)
        if problems:
            del loaded.functions[name]
            message = f"not trusted: {describe(problems)}"
            loaded.errors[name] = DefinitionError(name=name, path=function.path, message=message)
            log.error("function definition %s refused: %s", function.path, message)
            refused.add(name)
    if not refused:
        return previous
    kept = {n: f for n, f in previous.functions.items() if n not in refused}
    return Catalog(functions=kept)


def refuse(problems: list[Problem]) -> None:
    """Raise FnspoolError naming each problem and the commands that fix them, if any."""
    if problems:
        raise FnspoolError(
            f"others than the administrator could change what the daemon trusts "
            f"(docs/security.md): {describe(problems)}",
            title="unsafe spool",
        )


def describe(problems: list[Problem]) -> str:
    """One line: the problems (the first MAX_NAMED of them), then the fixes."""
    named = "; ".join(map(str, problems[:MAX_NAMED]))
    if len(problems) > MAX_NAMED:
        named += f"; and {len(problems) - MAX_NAMED} more"
    paths: dict[str, list[str]] = defaultdict(list)
    for problem in problems:
        if problem.fix:
            paths[problem.fix].append(shlex.quote(str(problem.path)))
    fixes = "; ".join(f"{fix} {' '.join(dict.fromkeys(found))}" for fix, found in paths.items())
    return f"{named}; fix with: {fixes}" if fixes else named


def _owner(path: Path, st: os.stat_result, me: int) -> list[Problem]:
    if st.st_uid in (0, me):
        return []
    what = f"is owned by {_user(st.st_uid)}, not by {_user(me)} or root"
    return [Problem(path, what, f"chown {_user(me)}")]


def _folders_above(root: Path) -> set[Path]:
    """Every folder that holds the spool or a link on the way to it."""
    real = Path(os.path.realpath(root))
    found = set(real.parents)
    prefix = Path(root.anchor)
    for part in root.parts[1:]:
        prefix = prefix / part
        if prefix.is_symlink():
            holder = Path(os.path.realpath(prefix.parent))
            found |= {holder, *holder.parents}
    return found


def _uid(uid: int | None) -> int:
    return os.geteuid() if uid is None else uid


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):o}"
