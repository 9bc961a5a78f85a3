// swift-tools-version:6.0
// The fuzz target, a package of its own so that libFuzzer (which brings its
// own `main`) never meets the driver's normal build. Built and run by
// scripts/fuzz:  swift build -c release --package-path fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library
import PackageDescription

let package = Package(
    name: "proxmox-csi-fuzz",
    dependencies: [
        .package(name: "proxmox-csi", path: ".."),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    ],
    targets: [
        .executableTarget(
            name: "FuzzWire",
            dependencies: [
                .product(name: "UnaryGRPC", package: "proxmox-csi"),
                .product(name: "CSIProto", package: "proxmox-csi"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
