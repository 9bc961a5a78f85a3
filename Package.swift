// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [.enableUpcomingFeature("ExistentialAny")]

let package = Package(
    name: "proxmox-csi",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "proxmox-csi", targets: ["proxmox-csi"]),
        // For the fuzz package (fuzz/), which builds them with libFuzzer.
        .library(name: "UnaryGRPC", targets: ["UnaryGRPC"]),
        .library(name: "CSIProto", targets: ["CSIProto"]),
    ],
    dependencies: [
        // No traits: the default BinaryDelimitedStreams trait links all of Foundation (and ICU) for streams we never use.
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0", traits: []),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // C libraries at the edge: module maps plus small shims.
        .systemLibrary(name: "CNGHTTP2", pkgConfig: "libnghttp2", providers: [.apt(["libnghttp2-dev"])]),
        // libcurl through dlopen at the first request (headers from libcurl4-openssl-dev at build time).
        .target(name: "CCurl", linkerSettings: [.linkedLibrary("dl")]),
        .target(name: "CLinux"),
        // String helpers the standard library lacks, so no module needs Foundation.
        .target(name: "TextSupport", swiftSettings: strict),
        .systemLibrary(name: "CBlkid", pkgConfig: "blkid", providers: [.apt(["libblkid-dev"])]),

        // Generated from proto/csi.proto by scripts/generate-proto; never edited by hand.
        .target(
            name: "CSIProto",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")],
            swiftSettings: strict
        ),
        // Unary gRPC over HTTP/2 (libnghttp2) on unix or tcp sockets. Knows no CSI.
        .target(
            name: "UnaryGRPC",
            dependencies: [
                "CNGHTTP2", "CLinux",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // The Proxmox VE API client (libcurl). Knows no CSI.
        .target(
            name: "ProxmoxAPI",
            dependencies: ["CCurl", "CLinux", "TextSupport"],
            swiftSettings: strict
        ),
        // The Proxmox domain: volumes and handles, VM disk slots, batched config
        // writes, copy/holder/option VMs. Knows no CSI and no gRPC; its errors are its own.
        .target(
            name: "ProxmoxDomain",
            dependencies: ["ProxmoxAPI", "TextSupport"],
            swiftSettings: strict
        ),
        // Block devices on the node: mounts, probing, formatting. Knows no CSI.
        .target(
            name: "BlockDevice",
            dependencies: ["CBlkid", "CLinux", "TextSupport"],
            swiftSettings: strict
        ),
        // Command lines of subcommands and --options, with help text. Knows no CSI.
        .target(name: "CommandLineOptions", swiftSettings: strict),
        // Prometheus metrics: counters, histograms, the text format and a small HTTP endpoint.
        .target(
            name: "Metrics",
            dependencies: ["UnaryGRPC", "CLinux"],
            swiftSettings: strict
        ),
        // The CSI services and everything that translates CSI onto Proxmox and the node.
        .target(
            name: "CSIDriver",
            dependencies: [
                "CSIProto", "UnaryGRPC", "ProxmoxAPI", "ProxmoxDomain", "BlockDevice", "Metrics", "CLinux", "TextSupport",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "proxmox-csi",
            dependencies: [
                "CSIDriver", "UnaryGRPC", "ProxmoxAPI", "ProxmoxDomain", "Metrics", "BlockDevice", "TextSupport", "CommandLineOptions",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),

        .testTarget(name: "CommandLineOptionsTests", dependencies: ["CommandLineOptions"], swiftSettings: strict),
        .testTarget(name: "CModulesTests", dependencies: ["CNGHTTP2", "CCurl", "CBlkid"], swiftSettings: strict),
        // An in-memory Proxmox cluster for the domain's and the controller's unit tests, and test TLS certificates.
        .target(name: "FakeProxmox", dependencies: ["ProxmoxAPI", "ProxmoxDomain"], path: "Tests/FakeProxmox", swiftSettings: strict),
        .testTarget(name: "ProxmoxDomainTests", dependencies: ["ProxmoxDomain", "ProxmoxAPI", "FakeProxmox"], swiftSettings: strict),
        .testTarget(name: "ProxmoxAPITests", dependencies: ["ProxmoxAPI", "FakeProxmox"], swiftSettings: strict),
        .testTarget(name: "BlockDeviceTests", dependencies: ["BlockDevice", "TextSupport"], swiftSettings: strict),
        .testTarget(name: "CSIProtoTests", dependencies: ["CSIProto"], swiftSettings: strict),
        .testTarget(name: "MetricsTests", dependencies: ["Metrics", "UnaryGRPC"], swiftSettings: strict),
        .testTarget(
            name: "UnaryGRPCTests",
            dependencies: ["UnaryGRPC", "CNGHTTP2", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
        .testTarget(
            name: "CSIDriverTests",
            dependencies: ["CSIDriver", "CSIProto", "UnaryGRPC", "BlockDevice", "ProxmoxAPI", "ProxmoxDomain", "FakeProxmox", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
    ],
    swiftLanguageModes: [.v6]
)
