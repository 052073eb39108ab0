"""The Supervisor: every child process of one daemon (or one tool), from spawn to the last sweep."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from daemon.cgroups import Cgroups
from daemon.supervise import procfs
from daemon.supervise.child import Child
from daemon.supervise.reaper import Reaper
from daemon.supervise.spawn import child_env, start_process, wrapped_argv
from daemon.supervise.sweep import sweep_own, sweep_predecessors
from daemon.supervise.tokens import TOKEN_VAR, Tokens, cgroup_key
from daemon.users import Account


class Supervisor:
    """Spawns children marked with its tokens, kills their trees, reaps what they leave.

    `Supervisor()` serves a tool or a test: no subreaper, no cgroups. The daemon's is built once
    by `take_over`, which runs the start-up steps in their order."""

    def __init__(
        self,
        tokens: Tokens | None = None,
        reaper: Reaper | None = None,
        cgroups: Cgroups | None = None,
    ) -> None:
        self.tokens = tokens or Tokens()
        self.reaper = reaper or Reaper()
        self.cgroups = cgroups  # a cgroup v2 group per child, where the daemon may make them

    @classmethod
    def take_over(cls, spool_mark: str) -> Supervisor:
        """The daemon's supervisor for the spool marked `spool_mark`: call from the event loop,
        with the spool's lock held, before anything is spawned. In this order: become the
        subreaper (the orphans of every child from now on come here), kill what a predecessor
        left (its processes, then its cgroups), and put every child in a cgroup of its own."""
        reaper = Reaper.adopt_orphans(asyncio.get_running_loop())
        tokens = Tokens(spool_mark)
        sweep_predecessors(tokens)
        return cls(tokens, reaper, Cgroups.make(f"fnspool-{spool_mark}"))

    def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        fds: Mapping[int, int],
        *,
        cwd: str | None = None,
        kill_group_on_exit: bool = True,
        user: Account | None = None,
    ) -> Child:
        """Start `argv` in a new session with `fds` mapped (child fd -> our fd); stdin is /dev/null
        unless mapped; as `user` when given (its uid, gid and groups are set before anything of
        `argv` runs, the change of directory included). Call from the event loop; OSError if it
        cannot be executed."""
        token = self.tokens.mint()
        env = child_env(env, {TOKEN_VAR: token})
        argv = wrapped_argv(argv, cwd, user)
        group = self.cgroups.new_group(cgroup_key(token)) if self.cgroups is not None else None
        if group is not None:  # outermost: the move needs the daemon's ids, not the user's
            argv = Cgroups.join_argv(group, argv)
        try:
            pid = start_process(argv, env, fds)
        except OSError:
            if group is not None:
                Cgroups.remove(group)
            raise
        self.reaper.spawned(pid, token)
        if group is not None:
            Cgroups.join(group, pid)  # in case its own move failed
        return Child(
            pid, self.reaper, kill_group_on_exit=kill_group_on_exit, token=token, cgroup=group
        )

    async def release(self, timeout: float = 2.0) -> None:
        """At shutdown, once every instance is retired: kill what still carries one of this
        supervisor's tokens and what the instances' groups still hold, wait (up to `timeout`)
        until it is gone, then remove the groups and the daemon's own."""
        killed = sweep_own(self.tokens, self.reaper)
        if self.cgroups is not None:
            for group in self.cgroups.groups():
                Cgroups.kill(group)
                self.reaper.emptied(group)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            removed = self.reaper.remove_emptied()
            self.reaper.reap_exited()
            killed = {pid for pid in killed if procfs.alive(pid)}
            if removed and not killed:
                break
            await asyncio.sleep(0.02)
        if self.cgroups is not None:
            self.cgroups.close()
