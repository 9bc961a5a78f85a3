"""Seed inputs for the wire fuzzer: what a gRPC client sends, made with the h2
library (an HTTP/2 implementation independent of nghttp2), so the fuzzer starts
past the preface, SETTINGS and HPACK instead of guessing them.

    python fuzz/make_seeds.py DIR
"""
import struct
import sys
from pathlib import Path

import h2.config
import h2.connection

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "csi-sanity" / "_gen"))
import csi_pb2  # noqa: E402

CAP = csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="xfs", mount_flags=["noatime"]),
                               access_mode=csi_pb2.VolumeCapability.AccessMode(mode=1))
CALLS = [
    ("/csi.v1.Identity/Probe", csi_pb2.ProbeRequest()),
    ("/csi.v1.Identity/GetPluginInfo", csi_pb2.GetPluginInfoRequest()),
    ("/csi.v1.Controller/CreateVolume", csi_pb2.CreateVolumeRequest(
        name="pvc-1", capacity_range=csi_pb2.CapacityRange(required_bytes=1 << 30), volume_capabilities=[CAP],
        parameters={"storage": "ceph"}, secrets={"token": "x"},
        accessibility_requirements=csi_pb2.TopologyRequirement(preferred=[csi_pb2.Topology(segments={"zone": "pve1"})]))),
    ("/csi.v1.Controller/ControllerPublishVolume", csi_pb2.ControllerPublishVolumeRequest(
        volume_id="sim//ceph/vm-9999-pvc-1", node_id="k8s-node-1", volume_capability=CAP, volume_context={"bus": "scsi"})),
    ("/csi.v1.Node/NodeStageVolume", csi_pb2.NodeStageVolumeRequest(
        volume_id="sim//ceph/vm-9999-pvc-1", staging_target_path="/var/lib/kubelet/x", volume_capability=CAP,
        publish_context={"serial": "csi-0123456789abcdef"})),
    ("/csi.v1.Controller/ListSnapshots", csi_pb2.ListSnapshotsRequest(max_entries=5, starting_token="3")),
]


def exchange(path, message, headers=(), flag=0, split_data=False):
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    stream = connection.get_next_available_stream_id()
    connection.send_headers(stream, [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "localhost"),
                                     ("content-type", "application/grpc"), ("te", "trailers"), *headers])
    body = message.SerializeToString()
    framed = struct.pack(">BI", flag, len(body)) + body
    if split_data:
        connection.send_data(stream, framed[:3])
        connection.send_data(stream, framed[3:], end_stream=True)
    else:
        connection.send_data(stream, framed, end_stream=True)
    connection.ping(b"12345678")
    return connection.data_to_send()


def main(directory):
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    seeds = []
    for path, message in CALLS:
        seeds.append(exchange(path, message))
    seeds.append(exchange("/csi.v1.Identity/Probe", csi_pb2.ProbeRequest(), headers=[("grpc-timeout", "5S")]))
    seeds.append(exchange("/csi.v1.Identity/Probe", csi_pb2.ProbeRequest(), headers=[("grpc-encoding", "gzip")], flag=1))
    seeds.append(exchange("/csi.v1.Controller/CreateVolume", CALLS[2][1], split_data=True))
    seeds.append(b"".join(exchange(p, m) for p, m in CALLS[:2]))
    for index, seed in enumerate(seeds):
        (out / f"seed-{index:02d}").write_bytes(seed)
    print(f"{len(seeds)} seeds in {out}")


if __name__ == "__main__":
    main(sys.argv[1])
