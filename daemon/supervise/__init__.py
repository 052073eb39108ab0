"""Child processes of instances: spawn in their own session, watch for exit, kill the tree.

The one place for process handling, shared by every runtime, as one `Supervisor` object
(`supervisor.py`) that the daemon builds once at start-up and hands to what spawns. `posix_spawn`
(never fork with a `preexec_fn`: the daemon has threads), exit noticed through a pidfd on the
event loop, status and resource usage reaped with `wait4`.

A process group is not a jail: a descendant that calls `setsid()` leaves it, and one whose parent
dies is reparented. So the daemon makes itself a child subreaper (orphans of its instances come to
it, not to init), marks every child's environment with a token of its own, and a kill stops and
kills the whole tree: the group, every descendant found through /proc/PID/task/*/children, and every
orphan carrying the token. At shutdown, whatever still carries one of the daemon's tokens is killed
before the daemon exits: a pid hopper caught between two reads of /proc would otherwise run on under
init. What still escapes is a process that both left the tree and cleared its environment; a
delegated cgroup (`cgroup.kill`) is the only complete answer to that. A child enters its group
before it runs anything of its own (cgroups.Cgroups.join_argv), so none of its forks is left out.

Modules, each importing only those above it:
- `tokens`: the token in every child's environment, and which tokens are whose;
- `procfs`: what /proc tells of processes (children, tokens, the newest pids);
- `kill`: stop a forking tree round after round, then kill it;
- `memory`: resident memory of a tree, and the watch that enforces `memory_mb`;
- `child`: one spawned process, its exit and `ExitStatus`;
- `spawn`: the environment, descriptors and argv of a child, and `posix_spawn` itself;
- `reaper`: what was spawned and what is left of it: orphans killed and reaped;
- `sweep`: whatever carries a predecessor's or this daemon's tokens, anywhere;
- `supervisor`: the object that ties them together.
"""
