//! Compiles proto/poolgate/v1 with protox (pure Rust: no protoc needed) and keeps the file
//! descriptor set for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // From the environment at run time, not `env!`: cargo may reuse this build script
    // compiled in another checkout that shares the target dir (its hash ignores the path).
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "poolgate/v1/admin.proto",
        "poolgate/v1/snapshot.proto",
        "poolgate/v1/report.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("poolgate_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // poolctl prints messages as JSON/YAML with the proto field names.
        .type_attribute(".poolgate.v1", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
