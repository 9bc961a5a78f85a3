// A grpc-go server answering /csi.v1.Identity/Probe exactly as the driver
// does (ready = true), for the side-by-side benchmark in scripts/benchmark.
// Built against Debian's golang-google-grpc-dev (GOPATH mode, no network).
package main

import (
	"context"
	"flag"
	"log"
	"net"

	"google.golang.org/grpc"
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

func main() {
	address := flag.String("listen", "127.0.0.1:0", "tcp address")
	flag.Parse()
	listener, err := net.Listen("tcp", *address)
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
	log.Fatal(server.Serve(listener))
}
