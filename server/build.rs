//! Generates the etcd v3 API and Cairn's internal protobuf code with protoc (package `protobuf-compiler`),
//! and the etcd API's JSON encoding for the gateway.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/etcd/api/mvccpb/kv.proto",
        "proto/etcd/api/authpb/auth.proto",
        "proto/etcd/api/etcdserverpb/rpc.proto",
        "proto/etcd/api/v3lockpb/v3lock.proto",
        "proto/etcd/api/v3electionpb/v3election.proto",
        "proto/cairn/cairnpb.proto",
        "proto/cairn/peerpb.proto",
    ];
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("descriptors.bin");
    tonic_prost_build::configure()
        // Snapshot chunks are slices of one buffer, not copies of it.
        .bytes(".peerpb.SnapshotChunk.data")
        // A membership encodes to the same bytes every time (nodes in ID order), as the peer
        // plane's fixtures of each protocol version check.
        .btree_map(".peerpb.Membership.nodes")
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&protos, &["proto"])?;
    // The JSON gateway's encoding of the etcd API: proto3 JSON with the proto field names, as
    // etcd's gateway writes it (int64 as strings, bytes as base64, defaults left out).
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .preserve_proto_field_names()
        .build(&[
            ".etcdserverpb",
            ".mvccpb",
            ".authpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
