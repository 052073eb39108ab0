"""One cgroup v2 group per instance, where the daemon may make them (a delegated cgroup, or root).

`cgroup.kill` ends every process in a group at once, whatever it did to leave the instance's
process tree: `setsid()`, double forks, a cleared environment. Where no writable cgroup v2 is
found, nothing is done here and the process-tree kill in daemon/supervise/ stands alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: TEST ONLY: make no cgroups even where the daemon may, so that tests run the process-tree kill
#: alone (as on a host without a writable cgroup v2) on machines that have them. Never set it
#: anywhere else.
NO_CGROUPS_TEST_ONLY = "FNSPOOL_TEST_ONLY_NO_CGROUPS"


def own_cgroup() -> Path | None:
    """The directory of this process's cgroup v2 group, if a cgroup2 hierarchy is mounted."""
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
        with open("/proc/self/cgroup") as f:
            unified = [line[3:].strip() for line in f if line.startswith("0::")]
    except OSError:
        return None
    points = [m[4] for m in mounts if "-" in m and m[m.index("-") + 1] == "cgroup2"]
    if not points or not unified:
        return None
    return Path(points[0]) / unified[0].lstrip("/")


class Cgroups:
    """The groups of one daemon's instances, under `base`."""

    def __init__(self, base: Path) -> None:
        self.base = base

    @classmethod
    def make(cls, name: str) -> Cgroups | None:
        """Groups under `name` in this process's own cgroup, or None where it may not make them.
        Groups a killed predecessor left there are emptied and removed first."""
        if os.environ.get(NO_CGROUPS_TEST_ONLY) == "1":
            log.critical("%s is set: instances get NO cgroups (tests only)", NO_CGROUPS_TEST_ONLY)
            return None
        own = own_cgroup()
        if own is None:
            return None
        base = own / name
        try:
            base.mkdir(exist_ok=True)
        except OSError:
            return None
        if not (base / "cgroup.kill").exists():  # cgroup.kill came with Linux 5.14
            with contextlib.suppress(OSError):
                base.rmdir()
            return None
        groups = cls(base)
        groups.sweep()
        log.info("instances get cgroups under %s", base)
        return groups

    def new_group(self, key: str) -> Path | None:
        """Make the group `key` for a child about to be spawned; None (logged) when it cannot be."""
        group = self.base / key
        try:
            group.mkdir()
        except OSError as exc:
            log.warning("cannot make cgroup %s: %s", group, exc)
            return None
        return group

    @staticmethod
    def join_argv(group: Path, argv: list[str]) -> list[str]:
        """`argv` run so that its process moves itself into `group` before anything of `argv`
        runs: what it forks at once is caught too (the daemon's move after the spawn comes too
        late for that). A failed move is said on its stderr and `argv` runs all the same."""
        return ["/bin/sh", "-c", 'echo $$ >"$0"; exec "$@"', str(group / "cgroup.procs"), *argv]

    @staticmethod
    def join(group: Path, pid: int) -> None:
        """Move `pid` into `group` (where it normally is already: see join_argv); logged when it
        cannot be."""
        try:
            (group / "cgroup.procs").write_text(str(pid))
        except ProcessLookupError:
            pass  # it has already exited: what it left is in the group, if anywhere
        except OSError as exc:
            log.warning("cannot put pid %d into cgroup %s: %s", pid, group, exc)

    @staticmethod
    def kill(group: Path) -> None:
        """SIGKILL every process in `group`."""
        with contextlib.suppress(OSError):
            (group / "cgroup.kill").write_text("1")

    @staticmethod
    def remove(group: Path) -> bool:
        """Remove an emptied group; False while its processes are still on their way out."""
        try:
            group.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True

    def groups(self) -> list[Path]:
        """Every group under the base."""
        try:
            return [p for p in self.base.iterdir() if p.is_dir()]
        except OSError:
            return []

    def sweep(self) -> int:
        """Kill every group found (a killed predecessor's; removed with the others at shutdown);
        how many were found."""
        groups = self.groups()
        for group in groups:
            self.kill(group)
        if groups:
            log.warning("killed what %d cgroups of a previous daemon still held", len(groups))
        return len(groups)

    def close(self) -> None:
        """Remove the base group if nothing is left in it."""
        with contextlib.suppress(OSError):
            self.base.rmdir()
