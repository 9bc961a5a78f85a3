"""The demo's client side: each call the way kubelet or a sidecar makes it."""
import sys
import time

sys.path.insert(0, "csi-sanity/_gen")
import grpc  # noqa: E402

import csi_pb2  # noqa: E402
import csi_pb2_grpc  # noqa: E402


def step(title, call):
    started = time.perf_counter()
    try:
        result = call()
        outcome = " ".join(str(result).split()) or "(empty response)"
    except grpc.RpcError as error:
        outcome = f"{error.code().name}: {error.details()}"
    print(f"-- {title} ({(time.perf_counter() - started) * 1000:.1f} ms)\n   {outcome}")


def main(endpoint):
    with grpc.insecure_channel(endpoint) as channel:
        identity = csi_pb2_grpc.IdentityStub(channel)
        step("GetPluginInfo, as node-driver-registrar asks at start",
             lambda: identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=5))
        step("GetPluginCapabilities, as csi-provisioner asks",
             lambda: identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest(), timeout=5))
        step("Probe, as livenessprobe asks every few seconds",
             lambda: identity.Probe(csi_pb2.ProbeRequest(), timeout=5))
        step("CreateVolume (the controller service lands next)",
             lambda: csi_pb2_grpc.ControllerStub(channel).CreateVolume(
                 csi_pb2.CreateVolumeRequest(name="pvc-demo", secrets={"token": "never-logged"}), timeout=5))


if __name__ == "__main__":
    main(sys.argv[1])
