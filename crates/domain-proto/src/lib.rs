//! Generated protobuf messages and gRPC clients/servers for the domain protocol (`domain.v1`).

pub mod codec;
pub mod error;
#[cfg(feature = "identity")]
pub mod identity;

/// Version 1 of the domain protocol.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
    tonic::include_proto!("domain.v1");
}

/// Encoded `FileDescriptorSet` of every `domain.v1` file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("domain_descriptor");

/// Protocol version string exchanged in the sequencer handshake.
pub const PROTOCOL_VERSION: &str = "domain.v1";
