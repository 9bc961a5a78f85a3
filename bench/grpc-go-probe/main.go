// A grpc-go server for the side-by-side benchmark in scripts/benchmark. It answers
// /csi.v1.Identity/Probe exactly as the driver does (ready = true), and
// /csi.v1.Node/NodeGetVolumeStats for a volume_path that does not exist exactly
// as the driver does (the same stat, the same NOT_FOUND status and message).
// Built against Debian's golang-google-grpc-dev (GOPATH mode, no network).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// rawCodec passes message bytes through untouched, so the server needs no
// generated CSI code; the Probe response is the same bytes the driver sends.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string   { return "proto" }
func (rawCodec) String() string { return "proto" }

// ProbeResponse{ready: BoolValue{value: true}}
var probeResponse = []byte{0x0a, 0x02, 0x08, 0x01}

func probe(_ interface{}, _ context.Context, decode func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
	var request []byte
	if err := decode(&request); err != nil {
		return nil, err
	}
	return probeResponse, nil
}

// stringFields reads the length-delimited fields of a protobuf message (wire type 2).
func stringFields(message []byte) (map[uint64]string, error) {
	fields := map[uint64]string{}
	varint := func() (uint64, error) {
		var value uint64
		for shift := uint(0); shift < 64; shift += 7 {
			if len(message) == 0 {
				return 0, errors.New("truncated varint")
			}
			b := message[0]
			message = message[1:]
			value |= uint64(b&0x7f) << shift
			if b < 0x80 {
				return value, nil
			}
		}
		return 0, errors.New("varint overflow")
	}
	for len(message) > 0 {
		tag, err := varint()
		if err != nil {
			return nil, err
		}
		if tag&7 != 2 {
			return nil, fmt.Errorf("unexpected wire type %d", tag&7)
		}
		length, err := varint()
		if err != nil || uint64(len(message)) < length {
			return nil, errors.New("truncated field")
		}
		fields[tag>>3] = string(message[:length])
		message = message[length:]
	}
	return fields, nil
}

// NodeGetVolumeStatsRequest{volume_id = 1, volume_path = 2}: the driver's checks, in its order.
func volumeStats(_ interface{}, _ context.Context, decode func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
	var request []byte
	if err := decode(&request); err != nil {
		return nil, err
	}
	fields, err := stringFields(request)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	id, path := fields[1], fields[2]
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if path == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_path is required")
	}
	if _, err := os.Stat(path); !strings.HasPrefix(path, "/") || strings.Contains(path, "/../") || os.IsNotExist(err) {
		return nil, status.Errorf(codes.NotFound, "volume %s is not at volume_path \"%s\": no such absolute path", id, path)
	}
	return nil, status.Error(codes.Unimplemented, "only the missing-path answer is modelled")
}

func main() {
	address := flag.String("listen", "127.0.0.1:0", "tcp address, or unix:PATH")
	flag.Parse()
	network, where := "tcp", *address
	if strings.HasPrefix(where, "unix:") {
		network, where = "unix", strings.TrimPrefix(where, "unix:")
	}
	listener, err := net.Listen(network, where)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("listening on %s", listener.Addr())
	server := grpc.NewServer(grpc.CustomCodec(rawCodec{}))
	server.RegisterService(&grpc.ServiceDesc{
		ServiceName: "csi.v1.Identity",
		HandlerType: (*interface{})(nil),
		Methods:     []grpc.MethodDesc{{MethodName: "Probe", Handler: probe}},
	}, struct{}{})
	server.RegisterService(&grpc.ServiceDesc{
		ServiceName: "csi.v1.Node",
		HandlerType: (*interface{})(nil),
		Methods:     []grpc.MethodDesc{{MethodName: "NodeGetVolumeStats", Handler: volumeStats}},
	}, struct{}{})
	log.Fatal(server.Serve(listener))
}
