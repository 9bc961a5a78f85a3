// Written by scripts/generate-proto. Do not edit.

/// SHA-256 of proto/csi.proto when csi.pb.swift was generated from it.
public let csiProtoSourceSHA256 = "b840b4b38648016fed100ef6d1d511cd8980bea9d259f10decc82e3f6301cfac"
