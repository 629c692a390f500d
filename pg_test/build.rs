//! Generates the gRPC client for `pg_ha.v1.Agent` from the workspace's `proto/pg_ha.proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let proto = proto_dir.join("pg_ha.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    tonic_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_protos(&[proto], &[proto_dir])?;
    Ok(())
}
