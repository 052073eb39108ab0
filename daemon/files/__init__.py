"""The route of an event's log, and the file helper that ends it.

An instance's output goes through `runtimes.base.EventLog` to the daemon's `EventLogs`
(logfiles.py), which makes a file only at an event's first line the journal does not hold; the
writes go to the journal's writer thread, which hands them to the file helper (filehelper.py,
the daemon's side; filework.py, the process) before the records that follow, and the helper
appends them to `logs/FUNCTION/ID.log`. The helper also removes journaled files from
`incoming/`. Readers (the CLI, the dashboard) show a log through eventlog.py: the file, or the
lines rendered from the event's records. See docs/logs.md.

Empty of code on purpose: eventlog.py stays light for the readers.
"""
