"""A raw HTTP/2 client (python-h2) for requests grpcio will not make:
bad framing, compressed flags, server-side deadlines."""
import socket
import struct

import h2.config
import h2.connection
import h2.events


def frame(message: bytes, compressed=False) -> bytes:
    return struct.pack(">BI", 1 if compressed else 0, len(message)) + message


class Response:
    def __init__(self):
        self.headers = {}
        self.trailers = {}
        self.data = b""
        self.reset = None

    @property
    def grpc_status(self):
        value = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return int(value) if value is not None else None

    @property
    def grpc_message(self):
        return self.trailers.get("grpc-message", self.headers.get("grpc-message"))


def call(endpoint: str, path: str, body: bytes, extra_headers=(), content_type="application/grpc", timeout=10,
         reset_after_body=False):
    """Sends one request and returns its Response; with `reset_after_body`,
    sends the body without ending the stream, resets it and returns None."""
    if endpoint.startswith("unix://") or endpoint.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(endpoint[len("unix://"):] if endpoint.startswith("unix://") else endpoint)
    else:
        host, port = endpoint.replace("tcp://", "").rsplit(":", 1)
        sock = socket.create_connection((host, int(port)))
    sock.settimeout(timeout)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "localhost"),
               ("content-type", content_type), ("te", "trailers"), *extra_headers]
    conn.send_headers(stream, headers, end_stream=not body)
    if body:
        # Respect flow control for large bodies.
        offset = 0
        while offset < len(body):
            window = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
            if window <= 0:
                sock.sendall(conn.data_to_send())
                _pump(sock, conn, stream, Response())
                continue
            chunk = body[offset:offset + window]
            offset += len(chunk)
            conn.send_data(stream, chunk, end_stream=offset >= len(body) and not reset_after_body)
            sock.sendall(conn.data_to_send())
    if reset_after_body:
        conn.reset_stream(stream)
        sock.sendall(conn.data_to_send())
        sock.close()
        return None
    sock.sendall(conn.data_to_send())
    response = Response()
    while not _pump(sock, conn, stream, response):
        pass
    sock.close()
    return response


def _pump(sock, conn, stream, response) -> bool:
    """Reads once; True when the stream has ended."""
    data = sock.recv(65536)
    if not data:
        return True
    done = False
    for event in conn.receive_data(data):
        if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
            response.headers = dict(event.headers)
        elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == stream:
            response.trailers = dict(event.headers)
        elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
            response.data += event.data
            conn.acknowledge_received_data(event.flow_controlled_length, stream)
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
            done = True
        elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
            response.reset = event.error_code
            done = True
        elif isinstance(event, h2.events.WindowUpdated):
            pass
    out = conn.data_to_send()
    if out:
        sock.sendall(out)
    return done
