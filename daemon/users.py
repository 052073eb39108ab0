"""The accounts instances run as: looked up by name, and whether one may use a path.

Light on purpose (the CLI checks definitions with it): standard library and msgspec only.
"""

from __future__ import annotations

import os
import pwd
import stat

import msgspec

R, X = 4, 1  # permission bits asked for, as in a mode's rwx triplet

_ACL = "system.posix_acl_access"
_WORDS = {R: "readable", X: "executable", R | X: "readable and executable"}


class Account(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the password database."""

    name: str
    uid: int
    gid: int
    home: str


def lookup(name: str) -> Account:
    """The account called `name`; ValueError naming it when the password database has none."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"unknown user {name!r} (not in the password database)") from None
    return Account(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir)


def name_of(uid: int) -> str:
    """The name of `uid`, or the number itself when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def login_env(account: Account) -> dict[str, str]:
    """HOME, USER and LOGNAME of `account`, as cron and login set them (not the daemon's)."""
    return {"HOME": account.home, "USER": account.name, "LOGNAME": account.name}


def denied(account: Account, path: str, want: int) -> tuple[str, str] | None:
    """What keeps `account` from using `path` as `want` (R, X or both) says: the directory or
    file in the way and why; None when nothing does, or when it cannot be told here (a missing
    path is the spawn's to report; a POSIX ACL is the kernel's to judge). Every directory on the
    way must be searchable, both as written and once symlinks are resolved."""
    groups = set(os.getgrouplist(account.name, account.gid))
    written, resolved = os.path.abspath(path), os.path.realpath(path)
    on_the_way = [*_parents(written), *_parents(resolved)]
    try:
        for directory in dict.fromkeys(on_the_way):  # in order, once each
            if not _allowed(directory, X, account.uid, groups):
                return directory, _refusal(directory, "searchable", account)
        if not _allowed(resolved, want, account.uid, groups):
            return resolved, _refusal(resolved, _WORDS[want], account)
    except OSError:
        return None
    return None


def _parents(path: str) -> list[str]:
    """The directories above `path`, from the root down."""
    parents, current = [], os.path.dirname(path)
    while True:
        parents.append(current)
        up = os.path.dirname(current)
        if up == current:
            return parents[::-1]
        current = up


def _allowed(path: str, want: int, uid: int, groups: set[int]) -> bool:
    st = os.stat(path)
    if st.st_uid == uid:
        bits = st.st_mode >> 6
    elif st.st_gid in groups:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    if bits & want == want:
        return True
    try:
        os.getxattr(path, _ACL)
    except OSError:
        return False  # no ACL: the mode bits are the whole answer
    return True  # an ACL may grant more than the mode bits show


def _refusal(path: str, what: str, account: Account) -> str:
    st = os.stat(path)
    mode, owner = stat.S_IMODE(st.st_mode), name_of(st.st_uid)
    return f"{path} (mode {mode:04o}, owner {owner}) is not {what} by user {account.name}"
