"""The Identity service, through an independent gRPC client."""
import re

import grpc

import csi_pb2


def test_plugin_info_names_the_driver_and_its_version(identity):
    info = identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=5)
    assert info.name == "proxmox-csi"
    assert re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", info.vendor_version)


def test_driver_name_flag_is_reported(start_driver):
    driver = start_driver("--driver-name", "csi.proxmox.sinextra.dev")
    with grpc.insecure_channel(driver.endpoint) as channel:
        info = __import__("csi_pb2_grpc").IdentityStub(channel).GetPluginInfo(
            csi_pb2.GetPluginInfoRequest(), timeout=5)
    assert info.name == "csi.proxmox.sinextra.dev"


def test_capabilities_claim_nothing_that_is_not_served(identity, channel):
    caps = identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest(), timeout=5).capabilities
    claimed = {c.service.type for c in caps if c.HasField("service")}
    if csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE in claimed:
        # A claimed controller must answer its capabilities call.
        from csi_pb2_grpc import ControllerStub
        ControllerStub(channel).ControllerGetCapabilities(csi_pb2.ControllerGetCapabilitiesRequest(), timeout=5)
    else:
        from csi_pb2_grpc import ControllerStub
        try:
            ControllerStub(channel).ControllerGetCapabilities(csi_pb2.ControllerGetCapabilitiesRequest(), timeout=5)
            raise AssertionError("a controller is served but CONTROLLER_SERVICE is not claimed")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def test_probe_reports_ready_explicitly(identity):
    response = identity.Probe(csi_pb2.ProbeRequest(), timeout=5)
    assert response.HasField("ready")
    assert response.ready.value is True
