//! Compiles `proto/` with protox (no system `protoc` exists on our build machines)
//! and exports the descriptor set for gRPC reflection.
use prost::Message as _;

/// Every file of the protocol, one package per directory (buf's PACKAGE_DIRECTORY_MATCH).
const PROTOS: &[&str] = &[
    "domain/common/v1/common.proto",
    "domain/topology/v1/topology.proto",
    "domain/sequencer/v1/sequencer.proto",
    "domain/sequencer/admin/v1/sequencer_admin.proto",
    "domain/confirmation/v1/confirmation.proto",
    "domain/mediator/admin/v1/mediator_admin.proto",
    "domain/manager/admin/v1/domain_admin.proto",
    "domain/participant/admin/v1/participant_admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    let fds = protox::compile(PROTOS, [&proto_root])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("domain_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .bytes(".domain.sequencer.v1.Envelope.content")
        .codec_path("crate::codec::DomainCodec")
        .compile_fds(fds)?;
    Ok(())
}
