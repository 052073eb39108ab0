"""`fnspool invoke` tells the truth: it waits for the daemon's verdict and exits non-zero when the
event is refused, whether or not it waits for the end."""

from __future__ import annotations

import json

from conftest import events, fnspool


def _rejected_files(spool):
    return sorted(p.name for p in (spool / "rejected").glob("*.reason.json"))


def test_a_reused_id_is_refused_and_nothing_is_submitted(spool, daemon):
    daemon.start()
    first = fnspool(spool, "invoke", "echo", "--id", "order-7", "--payload", '"first"', "--wait")
    assert first.returncode == 0
    for wait in ([], ["--wait"]):
        again = fnspool(
            spool, "invoke", "echo", "--id", "order-7", "--payload", '"second"', *wait, check=False
        )
        assert again.returncode == 1, again
        assert "already used by an event of echo (Succeeded)" in again.stderr
        assert again.stdout == ""  # never the old event's result
    (event,) = events(spool)
    assert json.loads(fnspool(spool, "events", "get", "order-7", "--json").stdout)["payload"] == (
        "first"
    )
    assert _rejected_files(spool) == [] and event["id"] == "order-7"


def test_a_file_the_daemon_rejects_is_a_non_zero_exit_with_its_reason(spool, daemon):
    daemon.start("--max-payload-bytes", "1000")
    big = json.dumps("x" * 2000)
    for wait in ([], ["--wait"]):
        out = fnspool(spool, "invoke", "echo", "--payload", big, *wait, check=False)
        assert out.returncode == 1, out
        assert "was rejected" in out.stderr and "rejected/" in out.stderr
    assert len(_rejected_files(spool)) == 2 and events(spool) == []


def test_a_negative_delay_and_a_broken_definition_are_refused_before_anything_is_written(
    spool, daemon
):
    daemon.start()
    (spool / "functions" / "broken.toml").write_text('runtime = "python"\nhandler = \n')
    out = fnspool(spool, "invoke", "echo", "--delay", "-1", check=False)
    assert out.returncode == 2 and "must be 0 or more seconds" in out.stderr
    out = fnspool(spool, "invoke", "broken", check=False)
    assert (
        out.returncode == 2 and "definition error" in out.stderr and "not valid TOML" in out.stderr
    )
    assert "no function" not in out.stderr
    missing = fnspool(spool, "invoke", "nosuch", check=False)
    assert missing.returncode == 4 and "no function 'nosuch'" in missing.stderr
    assert not list((spool / "incoming").glob("*.json")) and events(spool) == []


def test_a_bulk_reinvoke_shows_what_it_would_touch_before_it_asks(monkeypatch, capsys):
    from daemon.cli.bulk import confirm
    from daemon.cli.requests import REINVOKE
    from daemon.model import Event, State, raw_json

    chosen = [
        Event(id=f"e{n}", function="fail", payload=raw_json(n), state=State.FAILED, enqueued_at=0.0)
        for n in range(12)
    ]
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: print(prompt) or "n")
    assert confirm(chosen, REINVOKE) is False
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].split() == ["e0", "fail", "Failed"] and len(shown) == 12
    assert shown[-2] == "  ... and 2 more" and shown[-1] == "Re-invoke 12 events? [y/N] "


def test_version():
    import subprocess
    import sys

    from conftest import REPO

    out = subprocess.run(
        [sys.executable, "-m", "daemon", "--version"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("fnspool ")


def test_spool_before_or_after_the_command(spool, tmp_path):
    import subprocess
    import sys

    def listed(*argv: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "daemon", *argv], cwd=tmp_path, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    before = listed("--spool", str(spool), "functions", "list")
    after = listed("functions", "list", "--spool", str(spool))
    assert before == after and "echo" in before


def test_a_delay_takes_units():
    import argparse

    import pytest

    from daemon.cli.parser import delay

    assert [delay(t) for t in ("30", "90s", "5m", "2h", "1.5d")] == [30, 90, 300, 7200, 129600]
    for bad in ("-1", "5x", "inf", "nan", "m", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            delay(bad)


def test_every_option_and_argument_says_what_it_is():
    import argparse

    from daemon.cli.parser import build_parser

    def walk(parser: argparse.ArgumentParser, path: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction):
                yield path, action

    silent = [f"{path} {a.option_strings or a.dest}" for path, a in walk(build_parser(), "fnspool")
              if not a.help]  # fmt: skip
    assert not silent, silent


def test_bash_completion_offers_commands_options_states_functions_and_ids(spool, daemon):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("bash") is None:
        import pytest

        pytest.skip("needs bash")
    daemon.start()
    fnspool(spool, "invoke", "echo", "--id", "order-17", "--payload", "1", "--wait")
    script = fnspool(spool, "completion", "bash").stdout
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def offered(*words: str) -> list[str]:
        quoted = " ".join(f"'{w}'" for w in ("fnspool", *words))
        probe = f"{script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words)}; _fnspool\n"
        probe += 'printf "%s\\n" "${COMPREPLY[@]}"'
        out = subprocess.run(["bash", "-c", probe], env=env, capture_output=True, text=True)
        return out.stdout.split()

    assert {"events", "invoke", "status", "completion"} <= set(offered(""))
    assert offered("events", "l") == ["list", "logs"]
    assert offered("events", "list", "--st") == ["--status"]
    assert offered("events", "list", "--status", "Fa") == ["Failed"]
    assert "FINISHED" in offered("events", "list", "--status", "F")
    assert offered("--spool", str(spool), "invoke", "ec") == ["echo"]
    assert offered("--spool", str(spool), "events", "get", "order") == ["order-17"]


def _shell_env():
    import os
    import sys
    from pathlib import Path

    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def test_zsh_and_fish_completion_offer_the_same(spool):
    import shutil
    import subprocess

    import pytest

    missing = [s for s in ("zsh", "fish") if shutil.which(s) is None]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (Debian: .ci/run installs them)")
    zsh = fnspool(spool, "completion", "zsh").stdout
    probe = f"{zsh}\nCOMP_WORDS=(fnspool events l); COMP_CWORD=2; _fnspool; print -l $COMPREPLY"
    out = subprocess.run(["zsh", "-c", probe], env=_shell_env(), capture_output=True, text=True)
    assert out.stdout.split() == ["list", "logs"], out.stderr
    fish = fnspool(spool, "completion", "fish").stdout
    probe = f"{fish}\ncomplete -C 'fnspool events l'"
    out = subprocess.run(["fish", "-c", probe], env=_shell_env(), capture_output=True, text=True)
    assert out.stdout.split() == ["list", "logs"], out.stderr
