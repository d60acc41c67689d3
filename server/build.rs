//! Generates the etcd v3 API and Cairn's internal protobuf code with protoc (package `protobuf-compiler`).

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
    tonic_prost_build::configure()
        // Snapshot chunks are slices of one buffer, not copies of it.
        .bytes(".peerpb.SnapshotChunk.data")
        .build_client(true)
        .build_server(true)
        .compile_protos(&protos, &["proto"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
