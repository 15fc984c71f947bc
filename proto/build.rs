//! Generates the tonic/prost code from `proto/` with protox (pure Rust, no
//! system protoc needed).

const SPEC_SERDE: &str = "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]";
const SPEC_SERDE_ENUM: &str =
    "#[derive(serde::Serialize, serde::Deserialize)] #[serde(rename_all = \"snake_case\")]";

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
        // A capture spec is stored as JSON in the collector's request
        // documents (`ircap_proto::capture_spec`).
        .message_attribute(".ircap.v1.CaptureSpec", SPEC_SERDE)
        .message_attribute(".ircap.v1.MemorySelector", SPEC_SERDE)
        .enum_attribute(".ircap.v1.MemorySelector.select", SPEC_SERDE_ENUM)
        .message_attribute(".ircap.v1.PidList", SPEC_SERDE)
        // Capture labels in a stable order (manifests, request documents).
        .btree_map(".ircap.v1.CaptureSpec.capture_labels")
        .compile_fds(fds)?;
    Ok(())
}
