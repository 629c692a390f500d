// Generates the peer service (proto/pg_ha.proto) for the agent: server and client.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/pg_ha.proto");
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/pg_ha.proto"], &["proto"])?;
    Ok(())
}
