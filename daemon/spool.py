"""The spool: its paths and modes, safe reading of user files, and `rejected/` with reasons."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Container
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from daemon.text import file_text, printable

log = logging.getLogger(__name__)

SYSTEM_SPOOL = "/var/spool/fnspool"  # the system service's spool (`fnspool systemd install`)
#: the administrator's folders (and the spool itself): the daemon's user writes, the group reads
#: (setgid: what is made there stays in the spool's group), others have no access (docs/security.md)
DIR_MODE = 0o2750
#: where the group drops files, like a maildrop: setgid, and sticky so that a member can neither
#: remove nor rename another's file or the daemon's folders (incoming/NAME); 0 for others
DROP_MODE = 0o3770
DROP_FOLDERS = ("incoming", "control", "tmp")  # tmp/: clients write there, then rename in
_SUBDIRS = (
    "functions",
    "tmp",
    "incoming",
    "control",
    "journal",
    "logs",
    "destinations",
    "rejected",
    "run",
)
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# O_NOFOLLOW: a spool folder swapped for a link while the daemon runs is refused (ELOOP), never
# followed; the folders above it are checked at start (daemon/trust.py)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Spool:
    """The paths of one spool directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.functions = self.root / "functions"
        self.tmp = self.root / "tmp"
        self.incoming = self.root / "incoming"
        self.control = self.root / "control"
        self.journal = self.root / "journal"
        self.logs = self.root / "logs"
        self.destinations = self.root / "destinations"
        self.rejected = self.root / "rejected"
        self.run = self.root / "run"

    def __repr__(self) -> str:
        return f"Spool({str(self.root)!r})"

    @classmethod
    def resolve(cls, arg: str | os.PathLike[str] | None = None) -> Spool:
        """The spool named by `--spool DIR`, else `$FNSPOOL_SPOOL`, else `./spool`."""
        return cls(arg or os.environ.get("FNSPOOL_SPOOL") or "spool")

    def create(self) -> None:
        """Make the spool's directories that are missing, with the trust model's modes whatever
        the umask; leave existing ones as they are (check_modes judges them)."""
        _make_dir(self.root, DIR_MODE)
        for name in _SUBDIRS:
            _make_dir(self.root / name, folder_mode(name))

    def check_modes(self) -> None:
        """Refuse a spool that lets others than the administrator change what the daemon trusts
        (FnspoolError naming each path and the fix; the rules are in daemon/trust.py)."""
        from daemon import trust  # the daemon's only: CLI reads never load the definitions' TOML

        problems = [*trust.above(self.root), *trust.trusted(Path(os.path.realpath(self.root)))]
        for name in _SUBDIRS:
            path = self.root / name
            problems += trust.drop_folder(path) if name in DROP_FOLDERS else trust.trusted(path)
        problems += trust.tree(self.functions)
        problems += trust.entries(self.journal) + trust.entries(self.run)
        trust.refuse(problems)

    def make_drop_folder(self, name: str) -> None:
        """Make `incoming/NAME` (DROP_MODE: the group writes there) unless it exists, through a
        descriptor of incoming/ that never follows a link; a failure is logged."""
        try:
            fd = os.open(self.incoming, _DIR_FLAGS)
        except OSError as exc:
            log.error("cannot open %s to make its folder %s: %s", self.incoming, name, exc)
            return
        try:
            os.mkdir(name, 0o700, dir_fd=fd)
            sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            try:
                os.fchmod(sub, DROP_MODE)  # mkdir drops the sticky bit and obeys the umask
            finally:
                os.close(sub)
        except FileExistsError:
            pass  # the administrator may have closed it (chmod g-w): left as it is
        except OSError as exc:
            log.error("cannot make %s/%s: %s", self.incoming, name, exc)
        finally:
            os.close(fd)

    def relpath(self, path: str | os.PathLike[str]) -> str:
        """`path` relative to the spool root (as given when it lies outside)."""
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)


def folder_mode(name: str) -> int:
    """The mode of the spool folder `name` (DROP_MODE for the group's, else DIR_MODE)."""
    return DROP_MODE if name in DROP_FOLDERS else DIR_MODE


def _make_dir(path: Path, mode: int) -> None:
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        return
    try:
        # mkdir's mode is cut by the umask and drops setgid/sticky: set it explicitly
        os.chmod(path, mode)
    except PermissionError as exc:
        log.warning("cannot set mode %o on %s: %s", mode, path, exc)


class Rejection(Exception):
    """Why a user file cannot be accepted: a reason code and a sentence for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def safe_read(
    dir_fd: int, name: str, max_bytes: int, allowed_uids: Container[int] | None
) -> tuple[bytes, os.stat_result]:
    """Read a user file relative to `dir_fd` without following links; Rejection when unsafe."""
    # lstat first so fifos, sockets and devices are never opened at all
    check_stat(os.stat(name, dir_fd=dir_fd, follow_symlinks=False), max_bytes, allowed_uids)
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Rejection("symlink", "a symbolic link, not a file") from None
        if exc.errno == errno.ENXIO:
            raise Rejection("not_regular", "not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        check_stat(st, max_bytes, allowed_uids)
        return _read_bounded(fd, st.st_size, max_bytes), st
    finally:
        os.close(fd)


class DirFds:
    """Directory descriptors for one pass over a directory and its subdirectories."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.open(root, _DIR_FLAGS)
        self.fds: dict[str, int] = {"": self.root}

    def get(self, name: str) -> int:
        """The descriptor of subdirectory `name` ("" for the root), never through a symlink."""
        fd = self.fds.get(name)
        if fd is None:
            fd = self.fds[name] = os.open(name, _DIR_FLAGS, dir_fd=self.root)
        return fd

    def close(self) -> None:
        """Close every descriptor opened."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class FileId(NamedTuple):
    """One version of a file: the same inode, size and modification time (stat's names)."""

    st_dev: int
    st_ino: int
    st_size: int
    st_mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileId:
        """The identity `st` describes."""
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def same_file(dir_fd: int, name: str, st: os.stat_result | FileId) -> bool:
    """Whether `name` still is the file `st` describes (same inode, size and mtime)."""
    try:
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return _identity(now) == _identity(st)


ASIDE_PREFIX = ".fnspool-removing."  # a file being removed, for an instant (see below)


def unlink_if_same(dir_fd: int, name: str, st: os.stat_result | FileId) -> bool:
    """Remove `name` if it still is the file `st` describes; True when it was removed.

    A check then an unlink would remove a file renamed over the name in between (a new payload,
    never journaled, silently lost). So the file is first renamed aside to a hidden name, checked
    there, and put back (never over a newer one) when it turns out to be another file."""
    if not same_file(dir_fd, name, st):
        return False
    aside = f"{ASIDE_PREFIX}{st.st_ino}.{os.getpid()}.{threading.get_ident()}"
    try:
        os.rename(name, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    if same_file(dir_fd, aside, st):
        os.unlink(aside, dir_fd=dir_fd)
        return True
    log.warning("%s was replaced while being removed: kept", printable(name))
    stem, dot, ext = name.rpartition(".")
    for n in range(10_000):
        candidate = name if n == 0 else f"{stem}.{n}{dot}{ext}" if dot else f"{name}.{n}"
        if rename_noreplace(dir_fd, aside, dir_fd, candidate):
            return False
    raise OSError(errno.EEXIST, f"no free name to put back {printable(name)!r}")


def _identity(st: os.stat_result | FileId) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


#: (folder under incoming/, "" for incoming/ itself; file name)
Key = tuple[str, str]


def incoming_name(dirname: str, name: str) -> str:
    """A file's path relative to incoming/ ("" for a file in incoming/ itself)."""
    return f"{dirname}/{name}" if dirname else name


def remove_journaled(incoming: str | os.PathLike[str], files: list[tuple[Key, FileId]]) -> set[Key]:
    """Unlink journaled files that are still the ones journaled, then fsync each folder touched
    once (invariant I1's last two steps); return the keys of those still there, or whose removal
    may not be durable."""
    try:
        dirs = DirFds(incoming)
    except OSError as exc:
        log.error("cannot open %s to remove journaled files: %s", incoming, exc)
        return {key for key, _ in files}
    try:
        failed: set[Key] = set()
        removed = [key for key, st in files if _unlink_journaled(dirs, key, st, failed)]
        for name in {key[0] for key in removed}:
            try:
                os.fsync(dirs.get(name))
            except OSError as exc:
                # the files are journaled: one that comes back is recognised and removed again
                log.error("fsync of incoming/%s failed: %s", printable(name), exc)
                failed.update(key for key in removed if key[0] == name)
        return failed
    finally:
        dirs.close()


def _unlink_journaled(dirs: DirFds, key: Key, st: FileId, failed: set[Key]) -> bool:
    """Unlink the file at `key` if it is still the one journaled (not a new one renamed over
    it); add `key` to `failed` when it cannot be."""
    try:
        return unlink_if_same(dirs.get(key[0]), key[1], st)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.error("cannot remove incoming/%s: %s", printable(incoming_name(*key)), exc)
        failed.add(key)
        return False


def check_stat(st: os.stat_result, max_bytes: int, allowed_uids: Container[int] | None) -> None:
    """Raise Rejection unless `st` is a one-link regular file of an allowed owner, under the cap."""
    if stat.S_ISLNK(st.st_mode):
        raise Rejection("symlink", "a symbolic link, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise Rejection("not_regular", f"not a regular file ({_kind(st.st_mode)})")
    if st.st_nlink != 1:
        raise Rejection("hard_link", f"the file has {st.st_nlink} links; drop files by rename")
    if allowed_uids is not None and st.st_uid not in allowed_uids:
        raise Rejection("owner", f"owned by uid {st.st_uid}, which may not submit")
    if st.st_size > max_bytes:
        raise Rejection("too_large", f"{st.st_size} bytes, over the {max_bytes}-byte limit")


def _kind(mode: int) -> str:
    kinds = {
        stat.S_IFDIR: "directory",
        stat.S_IFIFO: "fifo",
        stat.S_IFSOCK: "socket",
        stat.S_IFCHR: "character device",
        stat.S_IFBLK: "block device",
    }
    return kinds.get(stat.S_IFMT(mode), "unknown type")


def _read_bounded(fd: int, size: int, max_bytes: int) -> bytes:
    """Read a regular file that fstat said holds `size` bytes, never more than max_bytes + 1 in
    all (a file that grows meanwhile is still bounded). A short read is the end of a regular
    file: one read when it did not grow."""
    chunks: list[bytes] = []
    total = 0
    want = min(size, max_bytes) + 1
    while total <= max_bytes:
        chunk = os.read(fd, want)
        chunks.append(chunk)
        total += len(chunk)
        if len(chunk) < want:
            break
        want = max_bytes + 1 - total
    if total > max_bytes:
        raise Rejection("too_large", f"grew past the {max_bytes}-byte limit while being read")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# -- rejected/ ----------------------------------------------------------------------------


class RejectReason(msgspec.Struct, frozen=True, kw_only=True):
    """The `NAME.reason.json` written beside a rejected file."""

    file: str
    rejected_as: str
    reason: str
    message: str
    at: str


_UNSAFE = re.compile(r"[^A-Za-z0-9._:+=@,-]")
_MAX_NAME = 180  # leaves room for a collision suffix and ".reason.json" under NAME_MAX
_reason_encoder = msgspec.json.Encoder()
_rename_lock = threading.Lock()


def safe_name(name: str) -> str:
    """A harmless file name for `name`: no control characters, no leading dots, bounded length."""
    text = _UNSAFE.sub("_", file_text(name)).lstrip(".")
    return text[:_MAX_NAME] or "unnamed"


def reject(
    spool: Spool, src: int | str | os.PathLike[str], name: str, rejection: Rejection, relpath: str
) -> str:
    """Move `name` (any file type, never followed) into rejected/ with a reason; the new name.
    Neither folder is reached through a link: one swapped for a link fails with ELOOP."""
    if not isinstance(src, int):
        src_fd = os.open(src, _DIR_FLAGS)
        try:
            return reject(spool, src_fd, name, rejection, relpath)
        finally:
            os.close(src_fd)
    dst_fd = os.open(spool.rejected, _DIR_FLAGS)
    try:
        new = _move_unique(src, name, dst_fd, safe_name(name))
        reason = RejectReason(
            file=file_text(relpath),
            rejected_as=new,
            reason=rejection.code,
            message=rejection.message,
            at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        _write_atomic(dst_fd, f"{new}.reason.json", _reason_encoder.encode(reason) + b"\n")
    finally:
        os.close(dst_fd)
    log.warning(
        "rejected %s as rejected/%s: %s: %s",
        printable(relpath),
        new,
        rejection.code,
        rejection.message,
    )
    return new


def _move_unique(src_fd: int, name: str, dst_fd: int, base: str) -> str:
    for n in range(10_000):
        candidate = base if n == 0 else f"{base}.{n}"
        if _exists(dst_fd, f"{candidate}.reason.json"):
            continue
        if rename_noreplace(src_fd, name, dst_fd, candidate):
            return candidate
    raise OSError(errno.EEXIST, f"no free name in rejected/ for {base!r}")


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _write_atomic(dir_fd: int, name: str, data: bytes) -> None:
    temp = f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


_RENAME_NOREPLACE = 1
_renameat2: Any
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _renameat2 = _libc.renameat2
    _renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
except (OSError, AttributeError):
    _renameat2 = None


def rename_noreplace(src_fd: int, name: str, dst_fd: int, new: str) -> bool:
    """Rename unless `new` exists (then False): a rejected file never replaces another."""
    if _renameat2 is not None:
        if _renameat2(src_fd, os.fsencode(name), dst_fd, os.fsencode(new), _RENAME_NOREPLACE) == 0:
            return True
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        if err not in (errno.EINVAL, errno.ENOSYS):  # EINVAL: the filesystem lacks the flag
            raise OSError(err, os.strerror(err), printable(name))
    with _rename_lock:  # fallback: a check then a rename, safe within this process
        if _exists(dst_fd, new):
            return False
        os.rename(name, new, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return True
