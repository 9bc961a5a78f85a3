"""The driver as a process: flags, sockets, signals, logs."""
import json
import os
import signal
import socket
import stat
import subprocess

import grpc

import csi_pb2
import csi_pb2_grpc
from conftest import DRIVER_BIN


def probe(target):
    with grpc.insecure_channel(target) as channel:
        return csi_pb2_grpc.IdentityStub(channel).Probe(csi_pb2.ProbeRequest(), timeout=5).ready.value


def run_cli(*args, env=None):
    return subprocess.run([DRIVER_BIN, *args], capture_output=True, text=True, timeout=30, env=env)


def test_sigterm_stops_cleanly_and_removes_the_socket(start_driver):
    driver = start_driver()
    assert stat.S_ISSOCK(os.lstat(driver.socket).st_mode)
    assert driver.stop(signal.SIGTERM) == 0
    assert not os.path.exists(driver.socket)
    assert "stopped" in driver.read_log()


def test_sigint_stops_cleanly_too(start_driver):
    driver = start_driver()
    assert driver.stop(signal.SIGINT) == 0
    assert not os.path.exists(driver.socket)


def test_socket_is_owner_and_group_only(start_driver):
    driver = start_driver()
    assert stat.S_IMODE(os.lstat(driver.socket).st_mode) == 0o660


def test_stale_socket_is_replaced(start_driver, tmp_path):
    path = str(tmp_path / "csi.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()
    start_driver(endpoint=f"unix://{path}")
    assert probe(f"unix://{path}")


def test_socket_of_a_live_driver_is_not_stolen(start_driver):
    first = start_driver()
    second = run_cli("--endpoint", first.endpoint)
    assert second.returncode == 1
    assert "in use by a running server" in second.stderr
    assert probe(first.endpoint)


def test_tcp_endpoint(start_driver):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    driver = start_driver(endpoint=f"tcp://127.0.0.1:{port}")
    assert probe(f"127.0.0.1:{port}")
    assert driver.stop() == 0


def test_endpoint_from_environment(tmp_path):
    path = tmp_path / "env.sock"
    env = dict(os.environ, CSI_ENDPOINT=f"unix://{path}")
    process = subprocess.Popen([DRIVER_BIN], env=env, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if path.exists():
                break
            process.wait(0.05) if process.poll() is not None else __import__("time").sleep(0.05)
        assert probe(f"unix://{path}")
    finally:
        process.terminate()
        process.wait(10)


def test_bad_flags_and_config_get_one_line_and_exit_code_2(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    cases = [
        ["--mode", "sideways"],
        ["--no-such-flag"],
        ["--endpoint", "http://example"],
        ["--log-format", "xml"],
        ["--driver-name", "bad_name"],
        ["--config", str(tmp_path / "missing.yaml")],
        ["--config", str(empty)],
    ]
    for args in cases:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (args, result.stderr)
        assert lines[0].startswith("proxmox-csi: "), lines
        assert "Traceback" not in result.stderr and "Fatal error" not in result.stderr


def test_help_and_version_exit_0():
    assert run_cli("--help").returncode == 0
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.strip()


def test_one_json_log_line_per_call(start_driver):
    driver = start_driver("--log-format", "json")
    for _ in range(3):
        probe(driver.endpoint)
    with grpc.insecure_channel(driver.endpoint) as channel:
        try:
            channel.unary_unary("/csi.v1.GroupController/GroupControllerGetCapabilities")(b"", timeout=5)
        except grpc.RpcError:
            pass
    driver.stop()
    records = [json.loads(line) for line in driver.read_log().splitlines() if line.strip()]
    calls = [r for r in records if r.get("msg") == "rpc"]
    probes = [r for r in calls if r["grpc.method"] == "/csi.v1.Identity/Probe"]
    # wait_ready's Probe plus the three here.
    assert len(probes) == 4
    assert all(r["grpc.code"] == "OK" and float(r["grpc.duration_ms"]) >= 0 for r in probes)
    unknown = [r for r in calls if r["grpc.method"] == "/csi.v1.GroupController/GroupControllerGetCapabilities"]
    assert len(unknown) == 1 and unknown[0]["grpc.code"] == "UNIMPLEMENTED"
