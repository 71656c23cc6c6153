"""The NATS drills (fault-matrix 7) read each stack server's settings from the config file it
was started with (that reading, against the configs `NatsServer` writes), and find the stack's
children by the module they run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lifeboat.devstack.drill import stack_child
from lifeboat.devstack.natsfaults import parse_config
from lifeboat.devstack.servers import NatsPorts, NatsServer


def test_a_cluster_servers_config_gives_its_client_address_not_its_routes(tmp_path: Path) -> None:
    server = NatsServer(
        tmp_path / "nats-2",
        NatsPorts(4223, 8223, 6223),
        name="nats-2",
        cluster="lifeboat",
        routes=(6222, 6223, 6224),
        max_file_store=128 << 20,
    )
    config = parse_config(server.config_file, server._config)  # what launch() writes
    assert config.client == "nats://127.0.0.1:4223"
    assert config.monitor == "http://127.0.0.1:8223"
    assert config.store_dir == tmp_path / "nats-2"
    assert config.max_file_store == 128 << 20
    assert config.file == tmp_path / "nats-2.conf"


def test_a_server_without_a_store_limit_has_none(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", NatsPorts(4222, 8222))
    assert parse_config(server.config_file, server._config).max_file_store is None


def test_the_stacks_child_is_found_by_the_module_it_runs(tmp_path: Path) -> None:
    runs = [sys.executable, "-c", "print(flush=True); input()", "lifeboat.gateway"]
    with subprocess.Popen(runs, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as child:
        try:
            assert child.stdout is not None
            child.stdout.readline()  # it has exec'd: its cmdline is its own
            ended = 2**22 + 1  # above pid_max's default: no such process
            (tmp_path / "children.json").write_text(json.dumps([ended, child.pid]))
            assert stack_child(tmp_path, b"lifeboat.gateway") == child.pid
            assert stack_child(tmp_path, b"lifeboat.failover") is None
        finally:
            child.kill()
