"""The units in systemd/, as `fnspool systemd install` writes them: verified and scored by systemd
itself, and the installer run for real (the system install inside a private copy of /etc)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO
from test_systemd_integration import open_installation

from daemon.cli import systemd as install

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a private mount namespace)")
MAX_EXPOSURE = 2.0  # `systemd-analyze security`: 0 is the best, 10 the worst


def write_units(tmp_path: Path, user: bool) -> dict[str, Path]:
    target = tmp_path / ("user" if user else "system")
    target.mkdir()
    paths = {}
    for name, text in install.rendered_units(user).items():
        paths[name] = target / name
        paths[name].write_text(text)
    return paths


def analyze(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    assert ANALYZE is not None
    runtime = tmp_path / "xdg-runtime"  # `--user` wants one, and must not touch the real one
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_every_shipped_unit_is_installed_somewhere():
    shipped = {p.name for p in (REPO / "systemd").iterdir()}
    used = set(install.SYSTEM_UNITS.values()) | set(install.USER_UNITS.values())
    assert shipped == used


def test_an_installed_wheel_carries_the_units(tmp_path):
    """Installed from a wheel (not a checkout), `fnspool systemd install` finds the units inside
    the package."""
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("daemon", "tui", "systemd"):
        shutil.copytree(REPO / part, source / part, ignore=ignore)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, source / part)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source]
    subprocess.run(build, check=True, timeout=300, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("fnspool-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True, timeout=300)
    probe = "from daemon.cli import systemd as s; print(s.UNITS_SOURCE, *s.rendered_units(True))"
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    where, *units = out.stdout.split()
    assert Path(where) == site / "daemon" / "units"
    assert units == list(install.USER_UNITS)
    found = [*(REPO / "daemon").rglob("__init__.py"), *(REPO / "tui").rglob("__init__.py")]
    packages = [p.parent.relative_to(REPO) for p in found]
    missing = [str(p) for p in packages if not (site / p / "__init__.py").exists()]
    assert not missing, f"packages left out of the wheel (pyproject.toml): {missing}"


def test_rendering_uses_this_installation_and_the_chosen_spool(tmp_path):
    units = install.rendered_units(user=False, spool=str(tmp_path / "sp"))
    service = units["fnspool.service"]
    assert install.SHIPPED_COMMAND not in service
    command = " ".join(install.fnspool_command())
    assert f"ExecStart={command} daemon --spool {tmp_path / 'sp'}\n" in service
    assert f"ReadWritePaths=-{tmp_path / 'sp'}\n" in service
    assert "ExecReload=" in service and "--pid $MAINPID" in service
    assert f"ReadWritePaths=-{tmp_path / 'sp'}-%i\n" in units["fnspool@.service"]
    with pytest.raises(install.FnspoolError, match="characters systemd would interpret"):
        install.rendered_units(user=False, spool="/var/spool/has space")


@needs_analyze
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_systemd_analyze_verify_says_nothing(tmp_path, user):
    for name, path in write_units(tmp_path, user).items():
        args = ["verify", *(["--user"] if user else []), str(path)]
        proc = analyze(*args, tmp_path=tmp_path)
        # unknown keys and bad values only warn: stderr must stay empty, not just the exit code
        assert proc.returncode == 0 and proc.stderr == "", f"{name}:\n{proc.stderr}"


@needs_analyze
@pytest.mark.parametrize("name", ["fnspool.service", "fnspool@.service"])
def test_security_exposure_is_low_and_the_spool_is_the_only_writable_path(tmp_path, name):
    path = write_units(tmp_path, user=False)[name]
    proc = analyze("security", "--offline=true", "--no-pager", str(path), tmp_path=tmp_path)
    if "offline" in proc.stderr and ("unrecognized" in proc.stderr or "Unknown" in proc.stderr):
        pytest.skip("systemd-analyze security --offline needs systemd 250 or later")
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found, proc.stdout[-2000:]
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, proc.stdout
    settings = [line for line in path.read_text().splitlines() if "=" in line and line[0] != "#"]
    assert "ProtectSystem=strict" in settings and "ProtectHome=yes" in settings
    writable = [s for s in settings if s.startswith(("ReadWritePaths=", "StateDirectory="))]
    assert writable == ["ReadWritePaths=-/var/spool/fnspool" + ("-%i" if "@" in name else "")]


# -- the installer ---------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
        check=False,
    )


def test_user_install_and_uninstall(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"} | {"HOME": str(home)}
    proc = run_cli("systemd", "install", "--user", env=env)
    assert proc.returncode == 0, proc.stderr
    unit = home / ".config" / "systemd" / "user" / "fnspool.service"
    text = unit.read_text()
    assert text.startswith(install.MARK)
    assert f"ExecStart={' '.join(install.fnspool_command())} daemon --spool %h/" in text
    assert (home / ".local" / "share" / "fnspool" / "incoming").is_dir()
    assert "systemctl --user daemon-reload" in proc.stdout
    assert "systemctl --user enable --now fnspool.service" in proc.stdout
    # enabled by hand, then uninstalled: the unit and its link go, the spool stays
    wants = unit.parent / "default.target.wants"
    wants.mkdir()
    (wants / "fnspool.service").symlink_to(unit)
    other = unit.parent / "other.service"
    other.write_text("[Service]\nExecStart=/bin/true\n")
    proc = run_cli("systemd", "uninstall", "--user", env=env)
    assert proc.returncode == 0, proc.stderr
    assert not unit.exists() and not (wants / "fnspool.service").is_symlink()
    assert other.exists() and (home / ".local" / "share" / "fnspool").is_dir()
    # a unit of that name that we did not write is kept
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    proc = run_cli("systemd", "uninstall", "--user", env=env)
    assert unit.exists() and "not written by fnspool" in proc.stderr


def test_the_system_install_needs_root_and_says_so(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root")
    proc = run_cli("systemd", "install")
    assert proc.returncode == 1 and "needs root" in proc.stderr


@needs_root
def test_system_install_creates_the_user_the_spool_and_the_units(tmp_path):
    """Run for real against a private copy of /etc (mounted over /etc in a mount namespace)."""
    if not shutil.which("unshare") or not shutil.which("useradd"):
        pytest.skip("needs unshare and useradd")
    hidden = install.under_tmp(install.installation_paths())
    if hidden:
        pytest.skip(f"this installation lies in {hidden[0]}, which the unit's PrivateTmp hides")
    etc = tmp_path / "etc"
    shutil.copytree("/etc", etc, symlinks=True)
    for stale in ("systemd/system/fnspool.service", "systemd/system/fnspool@.service"):
        (etc / stale).unlink(missing_ok=True)
    spool = tmp_path / "spool"
    spool.mkdir()
    # the service user must reach the spool: in the namespace it is /mnt/spool (/mnt a tmpfs
    # open to all, the spool a bind mount of ours), where pytest's own folders are closed
    seen_as = "/mnt/spool"
    host_passwd = Path("/etc/passwd").read_text()
    script = (
        open_installation(tmp_path / "stash").replace("\n", " && ")
        + f"mount --bind {etc} /etc && mount -t tmpfs -o mode=0755 fnspool-test /mnt && "
        f"mkdir {seen_as} && mount --bind {spool} {seen_as} && "
        f"{sys.executable} -m daemon systemd install --spool {seen_as} && "
        f'{sys.executable} -c \'import pwd, grp; print(pwd.getpwnam("fnspool").pw_uid, '
        f'grp.getgrnam("fnspool").gr_gid)\''
    )
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    if proc.returncode != 0 and "unshare failed" in proc.stderr:
        pytest.skip(f"no mount namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    uid, gid = map(int, proc.stdout.split()[-2:])
    assert uid < 1000 and gid < 1000, "a system user"
    assert "fnspool:" in (etc / "passwd").read_text()
    assert Path("/etc/passwd").read_text() == host_passwd, "the host's /etc is untouched"
    for name in install.SYSTEM_UNITS:
        unit = etc / "systemd" / "system" / name
        assert unit.stat().st_mode & 0o777 == 0o644
        assert seen_as in unit.read_text()
    for path in [spool, *spool.iterdir()]:
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (uid, gid), path
        drop = path.name in ("incoming", "control", "tmp")  # the group writes only there
        assert st.st_mode & 0o7777 == (0o3770 if drop else 0o2750), (path, oct(st.st_mode))
    assert "usermod -aG fnspool" in proc.stdout and "systemctl enable --now" in proc.stdout


def test_an_installation_the_service_user_cannot_read_is_refused(monkeypatch):
    # under /tmp itself: pytest's own temporary folders are closed to other users
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="fnspool-test-") as top:
        closed = Path(top) / "closed"
        (closed / "venv" / "bin").mkdir(parents=True)
        python = closed / "venv" / "bin" / "python"
        python.write_text("")
        python.chmod(0o755)
        os.chmod(top, 0o755)
        closed.chmod(0o700)
        assert install.unreadable_by_others([python]) == [closed]
        monkeypatch.setattr(install, "installation_paths", lambda: [python])
        spool = Path("/var/spool/fnspool")
        with pytest.raises(install.FnspoolError, match=f"{closed} is closed to other users"):
            install._check_reachable(spool)
        with pytest.raises(install.FnspoolError, match=f"could not reach the spool {closed}/s"):
            install._check_reachable(closed / "s")
        closed.chmod(0o755)
        assert install.unreadable_by_others([python]) == []
        with pytest.raises(install.FnspoolError, match=f"{python} lies under a temporary"):
            install._check_reachable(spool)  # PrivateTmp=yes would hide it from the service
        monkeypatch.setattr(install, "TMP_DIRS", ())
        assert install._check_reachable(spool) == "yes"
        with pytest.raises(install.FnspoolError, match="under a home directory"):
            install._check_reachable(Path("/home/ada/spool"))
    assert install.under_home([Path("/root/.pyenv/bin/python")])
    assert install.under_home([Path("/home/ada/venv")]) and not install.under_home([Path("/opt")])
    rendered = install.rendered_units(user=False, protect_home="read-only")["fnspool.service"]
    assert "\nProtectHome=read-only\n" in rendered and "ProtectHome=yes" not in rendered
