"""`fnspool systemd install|uninstall|reload`: the units in `systemd/`, made for this installation.

The shipped units name `/usr/local/bin/fnspool` and `/var/spool/fnspool` (or `%h/.local/share/
fnspool` for `--user`); `install` writes them with the command of the fnspool that runs it and the
chosen spool, creates the spool (and, for the system, the `fnspool` user and group owning it), and
prints the `systemctl` commands to run (or runs them with `--now`).
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from daemon import heartbeat
from daemon.atomic import write_whole
from daemon.errors import FnspoolError
from daemon.spool import DIR_MODE, SYSTEM_SPOOL, Spool, folder_mode


def _units_source() -> Path:
    """The shipped units: inside the package when installed from a wheel (daemon/units), else
    the checkout's systemd/ folder (an editable install, or running from the checkout)."""
    package = Path(__file__).resolve().parent.parent  # daemon/, beside which systemd/ lies
    packaged = package / "units"
    return packaged if packaged.is_dir() else package.parent / "systemd"


UNITS_SOURCE = _units_source()
MARK = "# Written by `fnspool systemd install`; `fnspool systemd uninstall` removes it.\n"
SHIPPED_COMMAND = "/usr/local/bin/fnspool"
USER_SPOOL = "%h/.local/share/fnspool"
SERVICE_USER = "fnspool"
HOME_DIRS = ("/home", "/root", "/run/user")  # what ProtectHome=yes hides
TMP_DIRS = ("/tmp", "/var/tmp")  # what PrivateTmp=yes hides
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
#: installed name -> shipped file
SYSTEM_UNITS = {
    "fnspool.service": "fnspool.service",
    "fnspool@.service": "fnspool@.service",
    "fnspool.path": "fnspool.path",
}
USER_UNITS = {"fnspool.service": "fnspool-user.service"}
# what a path may hold to be written into a unit unquoted (systemd treats % $ \ " ' and spaces)
_PLAIN_PATH = re.compile(r"^[A-Za-z0-9/._+,:@=-]+$")


def fnspool_command() -> list[str]:
    """How systemd should start this installation of fnspool."""
    script = Path(sys.executable).parent / "fnspool"
    if os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "daemon"]


def installation_paths() -> list[Path]:
    """What the service user must be able to read to run this installation."""
    paths = [Path(fnspool_command()[0]), Path(sys.executable).resolve()]
    paths.append(Path(sys.base_prefix).resolve())
    paths += [Path(p).resolve() for p in {sysconfig.get_path("purelib"), *sys.path} if p]
    paths.append(Path(__file__).resolve().parent)
    return [p for p in dict.fromkeys(paths) if p.exists() and p != Path(".").resolve()]


def unreadable_by_others(paths: list[Path]) -> list[Path]:
    """The first directory or file on the way to each path that others cannot get through."""
    blocked = []
    for path in paths:
        for part in [*reversed(path.parents), path]:
            st = part.stat()
            need = stat.S_IXOTH if stat.S_ISDIR(st.st_mode) else stat.S_IROTH
            if not st.st_mode & need:
                blocked.append(part)
                break
    return list(dict.fromkeys(blocked))


def under_home(paths: list[Path]) -> bool:
    """Whether any path lies where ProtectHome=yes would hide it."""
    return _under(paths, HOME_DIRS)


def under_tmp(paths: list[Path]) -> list[Path]:
    """The paths that lie where PrivateTmp=yes would hide them."""
    return [p for p in paths if _under([p], TMP_DIRS)]


def _under(paths: list[Path], tops: tuple[str, ...]) -> bool:
    return any(str(p) == top or str(p).startswith(top + "/") for p in paths for top in tops)


def render(
    template: str,
    command: list[str],
    spool: str | None,
    default_spool: str,
    protect_home: str = "yes",
) -> str:
    """A shipped unit with this installation's command and the chosen spool."""
    for part in command:
        _check_plain(part, "the fnspool command")
    text = template.replace(SHIPPED_COMMAND, " ".join(command))
    text = text.replace("\nProtectHome=yes\n", f"\nProtectHome={protect_home}\n")
    if spool is not None:
        _check_plain(spool, "the spool path")
        text = text.replace(default_spool, spool)
    return MARK + text


def _check_plain(path: str, what: str) -> None:
    if not _PLAIN_PATH.match(path):
        raise FnspoolError(
            f"{what} {path!r} has characters systemd would interpret (space, %, $, quotes)",
            title="systemd",
        )


def unit_dir(user: bool) -> Path:
    """Where units are installed: /etc/systemd/system, or the user's config directory."""
    if not user:
        return SYSTEM_UNIT_DIR
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user"


def rendered_units(
    user: bool, spool: str | None = None, protect_home: str = "yes"
) -> dict[str, str]:
    """Every unit to install, by installed name, rendered for this installation."""
    names = USER_UNITS if user else SYSTEM_UNITS
    default = USER_SPOOL if user else SYSTEM_SPOOL
    command = fnspool_command()
    units = {}
    for installed, shipped in names.items():
        try:
            template = (UNITS_SOURCE / shipped).read_text()
        except OSError as exc:
            raise FnspoolError(
                f"cannot read the shipped unit {UNITS_SOURCE / shipped}: {exc.strerror}",
                title="systemd",
            ) from None
        units[installed] = render(template, command, spool, default, protect_home)
    return units


# -- install --------------------------------------------------------------------------------


def install(args: argparse.Namespace) -> int:
    """Write the units, create the spool (and the service user), print the systemctl commands."""
    user = bool(args.user)
    target = Path(args.unit_dir) if args.unit_dir else unit_dir(user)
    spool = str(Path(args.spool).absolute()) if args.spool else None
    if not user and os.geteuid() != 0:
        raise FnspoolError("installing the system unit needs root (or use --user)", title="systemd")
    if user:
        root = Path(spool) if spool else Path.home() / ".local" / "share" / "fnspool"
        units = rendered_units(user, spool)
        Spool(root).create()
    else:
        root = Path(spool or SYSTEM_SPOOL)
        units = rendered_units(user, spool, _check_reachable(root))
        _create_service_user(root)
        _create_system_spool(root)
    target.mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        _write_unit(target / name, text)
        print(f"wrote {target / name}")
    print(f"spool: {root}")
    _commands(user, ["daemon-reload"], ["enable", "--now", "fnspool.service"], now=args.now)
    if not user:
        print(f"to let someone drop files: usermod -aG {SERVICE_USER} USER")
    else:
        print(f"to keep it running after logout: loginctl enable-linger {_login()}")
    return 0


def _check_reachable(spool: Path) -> str:
    """Refuse an installation the fnspool user could not run; the ProtectHome= it needs."""
    paths = installation_paths()
    blocked = unreadable_by_others([p for p in spool.parents if p.exists()][:1])
    if blocked:
        raise FnspoolError(
            f"the {SERVICE_USER} user could not reach the spool {spool}: {blocked[0]} is closed "
            "to other users",
            title="systemd",
        )
    if under_home([spool]):
        raise FnspoolError(f"the spool {spool} is under a home directory", title="systemd")
    blocked = unreadable_by_others(paths)
    if blocked:
        raise FnspoolError(
            f"the {SERVICE_USER} user could not run this installation: "
            f"{', '.join(map(str, blocked))} is closed to other users. Install fnspool where "
            "every user can read it, e.g. `python3 -m venv /opt/fnspool && "
            "/opt/fnspool/bin/pip install fnspool`, and run its `fnspool systemd install`",
            title="systemd",
        )
    hidden = under_tmp([spool, *paths])
    if hidden:
        raise FnspoolError(
            f"{hidden[0]} lies under a temporary directory, which the service's PrivateTmp=yes "
            "hides (and cleaners empty): install fnspool and its spool elsewhere, e.g. /opt",
            title="systemd",
        )
    if under_home(paths):
        print("this installation lies under a home directory: ProtectHome=read-only, not yes")
        return "read-only"
    return "yes"


def _write_unit(path: Path, text: str) -> None:
    write_whole(path, text.encode(), 0o644)


def _create_service_user(home: Path) -> None:
    """The fixed `fnspool` system user and group (DynamicUser would hide the spool from people)."""
    try:
        grp.getgrnam(SERVICE_USER)
    except KeyError:
        _run(["groupadd", "--system", SERVICE_USER])
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        nologin = shutil.which("nologin") or "/usr/sbin/nologin"
        _run(
            [
                "useradd",
                "--system",
                "--gid",
                SERVICE_USER,
                "--home-dir",
                str(home),
                "--no-create-home",
                "--no-log-init",  # no lastlog/faillog entries for a service user
                "--shell",
                nologin,
                "--comment",
                "fnspool daemon",
                SERVICE_USER,
            ]
        )


def _create_system_spool(root: Path) -> None:
    """The spool and its folders, owned by fnspool, with the trust model's modes (the group
    writes only into incoming/, control/ and tmp/); what the daemon wrote before (a spool run as
    another user) becomes fnspool's, what people dropped stays theirs (the journal records who
    submitted)."""
    spool = Spool(root)
    spool.create()
    uid, gid = pwd.getpwnam(SERVICE_USER).pw_uid, grp.getgrnam(SERVICE_USER).gr_gid
    for path in [root, *(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())]:
        os.chown(path, uid, gid)
        os.chmod(path, DIR_MODE if path == root else folder_mode(path.name))
    for written in (spool.journal, spool.logs, spool.run, spool.destinations, spool.rejected):
        for top, dirs, files in os.walk(written):
            for name in dirs + files:
                os.chown(os.path.join(top, name), uid, gid, follow_symlinks=False)


def _run(argv: list[str]) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise FnspoolError(f"{argv[0]} is not installed", title="systemd") from None
    except subprocess.CalledProcessError as exc:
        raise FnspoolError(
            f"{' '.join(argv)} failed: {exc.stderr.strip() or exc.returncode}", title="systemd"
        ) from None


def _commands(user: bool, *steps: list[str], now: bool) -> None:
    base = ["systemctl", *(["--user"] if user else [])]
    for step in steps:
        argv = [*base, *step]
        if now:
            print("running: " + " ".join(argv))
            _run(argv)
        else:
            print("run: " + " ".join(argv))


def _login() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


# -- uninstall ------------------------------------------------------------------------------


def uninstall(args: argparse.Namespace) -> int:
    """Remove the units `install` wrote (and their enablement links); keep the spool and user."""
    user = bool(args.user)
    target = Path(args.unit_dir) if args.unit_dir else unit_dir(user)
    names = list(USER_UNITS if user else SYSTEM_UNITS)
    if args.now:
        _commands(user, ["disable", "--now", *names], now=True)
    removed = 0
    for name in names:
        path = target / name
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        if not text.startswith(MARK):
            print(f"kept {path}: not written by fnspool systemd install", file=sys.stderr)
            continue
        path.unlink()
        removed += 1
        print(f"removed {path}")
        for wants in target.glob("*.wants"):
            link = wants / name
            if link.is_symlink():  # dangling now: glob() would not see it
                link.unlink()
                print(f"removed {link}")
    if not removed:
        print(f"no fnspool units in {target}")
    if not args.now:
        _commands(user, ["stop", *names], ["daemon-reload"], now=False)
    else:
        _commands(user, ["daemon-reload"], now=True)
    print("the spool and the fnspool user are kept: remove them yourself if you mean to")
    return 0


# -- reload (ExecReload) ----------------------------------------------------------------------


def reload(args: argparse.Namespace) -> int:
    """SIGHUP the daemon, then wait until its heartbeat shows the reload done."""
    run_dir = Spool.resolve(args.spool).run
    pid = args.pid
    before = _reloads(run_dir, pid)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise FnspoolError(f"no process {pid}", title="reload") from None
    if before is None:
        return 0  # no heartbeat of that pid to follow: the signal is all we can do
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        after = _reloads(run_dir, pid)
        if after is not None and after > before:
            return 0
        time.sleep(0.02)
    raise FnspoolError(f"the daemon did not reload within {args.timeout:.0f}s", title="reload")


def _reloads(run_dir: Path, pid: int) -> int | None:
    beat = heartbeat.read(run_dir)
    return beat.reloads if beat is not None and beat.pid == pid else None
