"""The `[placement]` table: decoded strictly, checked with errors naming the key, light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fnspool

from daemon.functions import load_function
from daemon.placement import Placement

REPO = Path(__file__).resolve().parent.parent


def _load(tmp_path: Path, table: str, head: str = 'handler = "index.handler"\n'):
    path = tmp_path / "placed.toml"
    path.write_text(f"{head}\n[placement]\n{table}\n")
    return load_function(path)


def test_no_table_means_local_and_no_ray_needs(tmp_path):
    path = tmp_path / "plain.toml"
    path.write_text('handler = "index.handler"\n')
    assert load_function(path).placement == Placement()
    assert not load_function(path).placement.remote


def test_a_ray_placement_is_read_whole(tmp_path):
    d = _load(
        tmp_path,
        'engine = "ray"\nnum_cpus = 0.5\nnum_gpus = 2\nresources = { node_b = 1, fast = 0.25 }',
        'handler = "index.handler"\nmemory_mb = 256\n',
    )
    assert d.placement.remote
    assert (d.placement.num_cpus, d.placement.num_gpus) == (0.5, 2.0)
    assert d.placement.resources == {"node_b": 1.0, "fast": 0.25}
    assert d.memory_mb == 256


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('engine = "k8s"', '`placement.engine` must be "local" or "ray", got \'k8s\''),
        ("num_cpus = -1", "`placement.num_cpus` must not be negative, got -1.0"),
        ("num_gpus = -0.5", "`placement.num_gpus` must not be negative"),
        ("num_cpus = 1.5", "`placement.num_cpus` must be a whole number when over 1, got 1.5"),
        ("num_cpus = nan", "`placement.num_cpus` must be a finite number"),
        ("resources = { a = -2 }", "`placement.resources.a` must not be negative, got -2.0"),
        ('resources = { a = "lots" }', "`placement.resources.a` must be a number (an amount"),
        ("resources = { a = true }", "`placement.resources.a` must be a number"),
        ("resources = 3", "Expected `object`, got `int` - at `$.placement.resources`"),
        ("resources = { CPU = 2 }", "must not name Ray's own 'CPU'"),
        ("resources = { GPU = 1 }", "must not name Ray's own 'GPU'"),
        ('resources = { "a b" = 1 }', "bad resource name 'a b'"),
        ("nodes = 2", "Object contains unknown field `nodes` - at `$.placement`"),
    ],
)
def test_bad_placements_are_errors_naming_the_key(tmp_path, table, message):
    with pytest.raises(ValueError) as caught:
        _load(tmp_path, table)
    assert message in str(caught.value)


def test_a_fixed_port_server_is_not_placed_on_ray(tmp_path):
    head = 'runtime = "http"\ncommand = ["./server"]\nport = 9000\n'
    with pytest.raises(ValueError, match="`port` is for instances on this machine, not `placement"):
        _load(tmp_path, 'engine = "ray"', head)
    # a local server may carry the amounts it would ask of Ray
    assert _load(tmp_path, "num_cpus = 2", head).placement.num_cpus == 2


def test_a_bad_placement_is_shown_by_functions_list(spool):
    (spool / "functions" / "placed.toml").write_text(
        'handler = "index.handler"\n[placement]\nengine = "ray"\nnum_gpus = -1\n'
    )
    listed = fnspool(spool, "functions", "list", check=False)
    assert "placed" in listed.stdout
    assert "`placement.num_gpus` must not be negative" in listed.stdout


def test_reading_definitions_never_imports_ray():
    code = (
        "import sys; from daemon.functions import load_catalog; from pathlib import Path; "
        f"load_catalog(Path({str(REPO / 'spool' / 'functions')!r})); "
        "import daemon.service, daemon.cli; print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "False", out.stderr


def test_a_daemon_with_only_local_functions_never_loads_ray(spool, daemon):
    d = daemon.start()
    out = fnspool(spool, "invoke", "echo", "--payload", '{"n": 1}', "--wait")
    assert "Succeeded" in out.stdout
    maps = Path(f"/proc/{d.pid}/maps").read_text()
    assert "_raylet" not in maps and "/ray/" not in maps
    assert d.stop() == 0
