//! Generates the tonic/prost code from `proto/` with protox (pure Rust, no
//! system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        [
            "ircap/v1/upload.proto",
            "ircap/v1/query.proto",
            "ircap/v1/control.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Chunk payloads as `bytes::Bytes`: the agent keeps each chunk for
        // resending until it is acknowledged, and clones must not copy.
        .bytes(".ircap.v1.Chunk.data")
        .bytes(".ircap.v1.ArtifactData.data")
        .compile_fds(fds)?;
    Ok(())
}
