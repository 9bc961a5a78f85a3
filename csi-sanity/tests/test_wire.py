"""gRPC wire behaviour of the server, seen by independent clients."""
import concurrent.futures
import struct
import urllib.parse

import grpc
import pytest

import csi_pb2
import csi_pb2_grpc
import rawh2

PROBE = "/csi.v1.Identity/Probe"
MAX = 4 * 1024 * 1024


def raw_probe(channel):
    return channel.unary_unary(PROBE, request_serializer=None, response_deserializer=None)


def expect_status(code, fn, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as caught:
        fn(*args, **kwargs)
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details()


def test_unknown_method_is_unimplemented(channel):
    details = expect_status(grpc.StatusCode.UNIMPLEMENTED,
                            channel.unary_unary("/csi.v1.Identity/NoSuchMethod"), b"", timeout=5)
    assert "NoSuchMethod" in details


def test_unknown_service_is_unimplemented(channel):
    details = expect_status(grpc.StatusCode.UNIMPLEMENTED,
                            channel.unary_unary("/csi.v1.NoSuchService/Probe"), b"", timeout=5)
    assert "csi.v1.NoSuchService" in details


def test_body_that_is_not_protobuf_is_internal(channel):
    details = expect_status(grpc.StatusCode.INTERNAL, raw_probe(channel), b"\xff\xff\xff\xff", timeout=5)
    assert "unmarshal" in details


def varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def unknown_field(size):
    """A valid ProbeRequest of exactly `size` bytes: one length-delimited field
    (number 15) that the server does not know and must skip."""
    payload = size - 2
    while 1 + len(varint(payload)) + payload > size:
        payload -= 1
    return bytes([0x7A]) + varint(payload) + b"x" * payload


def test_message_at_the_limit_is_accepted(endpoint):
    message = unknown_field(MAX)
    assert len(message) == MAX
    options = [("grpc.max_send_message_length", 64 * MAX)]
    with grpc.insecure_channel(endpoint, options=options) as channel:
        reply = csi_pb2.ProbeResponse.FromString(raw_probe(channel)(message, timeout=20))
    assert reply.ready.value is True


def test_message_over_the_limit_is_resource_exhausted(endpoint):
    message = unknown_field(MAX + 1)
    assert len(message) == MAX + 1
    options = [("grpc.max_send_message_length", 64 * MAX)]
    with grpc.insecure_channel(endpoint, options=options) as channel:
        details = expect_status(grpc.StatusCode.RESOURCE_EXHAUSTED, raw_probe(channel), message, timeout=20)
    assert "larger than max" in details


@pytest.mark.parametrize("body, words", [
    (rawh2.frame(b"")[:3], "ended inside a message's prefix (3 of 5 bytes)"),
    (struct.pack(">BI", 0, 100) + b"x" * 10, "ended inside a message (10 of 100 bytes)"),
    (b"", "ended without a message"),
    (rawh2.frame(b"") + rawh2.frame(b""), "more than one request message"),
    (rawh2.frame(bytes([0x7A, 50]) + b"abc"), "unmarshal"),                   # a field longer than the message
], ids=["short-prefix", "short-message", "no-message", "two-messages", "truncated-protobuf"])
def test_truncated_or_extra_request_data_is_internal_and_the_server_goes_on(endpoint, identity, body, words):
    response = rawh2.call(endpoint, PROBE, body)
    assert response.grpc_status == grpc.StatusCode.INTERNAL.value[0], response.grpc_message
    assert words in urllib.parse.unquote(response.grpc_message or "")
    assert identity.Probe(csi_pb2.ProbeRequest(), timeout=5).ready.value is True


def test_a_request_reset_halfway_leaves_the_server_serving(endpoint, identity):
    # Half a message, then RST_STREAM: no answer is owed, and nothing may hang or leak.
    for _ in range(20):
        rawh2.call(endpoint, PROBE, struct.pack(">BI", 0, 1000) + b"x" * 100, reset_after_body=True)
    assert identity.Probe(csi_pb2.ProbeRequest(), timeout=5).ready.value is True


def test_compressed_request_without_encoding_is_internal(endpoint):
    response = rawh2.call(endpoint, PROBE, rawh2.frame(b"", compressed=True))
    assert response.grpc_status == grpc.StatusCode.INTERNAL.value[0]


def test_unsupported_compression_is_unimplemented(endpoint):
    with grpc.insecure_channel(endpoint, compression=grpc.Compression.Gzip) as channel:
        expect_status(grpc.StatusCode.UNIMPLEMENTED, csi_pb2_grpc.IdentityStub(channel).Probe,
                      csi_pb2.ProbeRequest(), timeout=5)


def test_errors_before_any_message_are_trailers_only(endpoint):
    response = rawh2.call(endpoint, "/csi.v1.Identity/Nope", rawh2.frame(b""))
    assert response.headers.get(":status") == "200"
    assert response.headers.get("grpc-status") == "12"
    assert response.trailers == {}
    assert response.data == b""


def test_ok_response_has_message_then_status_in_trailers(endpoint):
    response = rawh2.call(endpoint, PROBE, rawh2.frame(b""))
    assert response.headers.get(":status") == "200"
    assert response.headers.get("content-type", "").startswith("application/grpc")
    assert "grpc-status" not in response.headers
    assert response.trailers.get("grpc-status") == "0"
    assert response.data[0] == 0 and int.from_bytes(response.data[1:5], "big") == len(response.data) - 5


def test_server_enforces_the_deadline_it_was_given(endpoint):
    # 1 ns has passed by the time the handler could answer: the server, not
    # the client, must end the call with DEADLINE_EXCEEDED.
    response = rawh2.call(endpoint, PROBE, rawh2.frame(b""), extra_headers=[("grpc-timeout", "1n")])
    assert response.grpc_status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


def test_generous_deadline_is_parsed_and_the_call_succeeds(identity):
    assert identity.Probe(csi_pb2.ProbeRequest(), timeout=30).ready.value is True


def test_malformed_timeout_is_internal(endpoint):
    response = rawh2.call(endpoint, PROBE, rawh2.frame(b""), extra_headers=[("grpc-timeout", "soon")])
    assert response.grpc_status == grpc.StatusCode.INTERNAL.value[0]


def test_wrong_content_type_is_refused(endpoint):
    response = rawh2.call(endpoint, PROBE, rawh2.frame(b""), content_type="application/json")
    assert response.headers.get(":status") == "415"


def test_200_concurrent_calls_on_one_connection(identity):
    futures = [identity.Probe.future(csi_pb2.ProbeRequest(), timeout=30) for _ in range(200)]
    assert all(f.result().ready.value for f in futures)


def test_200_concurrent_calls_over_many_connections(endpoint):
    def one(index):
        # Distinct channel arguments keep grpcio from sharing one connection.
        with grpc.insecure_channel(endpoint, options=[("test.connection", index)]) as channel:
            stub = csi_pb2_grpc.IdentityStub(channel)
            futures = [stub.GetPluginInfo.future(csi_pb2.GetPluginInfoRequest(), timeout=30) for _ in range(10)]
            return [f.result().name for f in futures]

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        batches = list(pool.map(one, range(20)))
    assert sum(len(b) for b in batches) == 200
    assert {name for b in batches for name in b} == {"proxmox-csi"}
