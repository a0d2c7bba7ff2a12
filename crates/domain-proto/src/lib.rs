//! Generated protobuf messages and gRPC clients/servers for the domain protocol: one Rust
//! module per protobuf package under `proto/domain` (docs/protocol.md), e.g.
//! `domain.sequencer.v1` is [`sequencer::v1`].

pub mod codec;
pub mod error;
#[cfg(feature = "identity")]
pub mod identity;

macro_rules! package {
    ($(#[$doc:meta])* $name:ident = $package:literal) => {
        $(#[$doc])*
        pub mod $name {
            #![allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
            tonic::include_proto!($package);
        }
    };
}

/// `domain.common.*`: types every surface shares.
pub mod common {
    package!(
        /// `domain.common.v1`: signatures and public keys.
        v1 = "domain.common.v1"
    );
}

/// `domain.topology.*`: topology transactions, carried by sequenced events.
pub mod topology {
    package!(
        /// `domain.topology.v1`: topology transactions and domain parameters.
        v1 = "domain.topology.v1"
    );
}

/// `domain.sequencer.*`: the sequencer's APIs.
pub mod sequencer {
    package!(
        /// `domain.sequencer.v1`: the public sequencer API and the sequenced event format.
        v1 = "domain.sequencer.v1"
    );

    /// `domain.sequencer.admin.*`: the sequencer's operator API.
    pub mod admin {
        package!(
            /// `domain.sequencer.admin.v1`: members, instances, pruning.
            v1 = "domain.sequencer.admin.v1"
        );
    }
}

/// `domain.confirmation.*`: the confirmation protocol (envelope content).
pub mod confirmation {
    package!(
        /// `domain.confirmation.v1`: requests, responses, verdicts, `DomainMessage`.
        v1 = "domain.confirmation.v1"
    );
}

/// `domain.mediator.*`: the mediator's APIs.
pub mod mediator {
    /// `domain.mediator.admin.*`: the mediator's operator API.
    pub mod admin {
        package!(
            /// `domain.mediator.admin.v1`: the status of a mediator replica.
            v1 = "domain.mediator.admin.v1"
        );
    }
}

/// `domain.manager.*`: the domain manager's APIs.
pub mod manager {
    /// `domain.manager.admin.*`: the domain manager's admin API (used by `domainctl`).
    pub mod admin {
        package!(
            /// `domain.manager.admin.v1`: participants, mediators, sequencers, parameters.
            v1 = "domain.manager.admin.v1"
        );
    }
}

/// `domain.participant.*`: the reference participant's APIs.
pub mod participant {
    /// `domain.participant.admin.*`: the participant's admin API.
    pub mod admin {
        package!(
            /// `domain.participant.admin.v1`: id, connect, ping, status.
            v1 = "domain.participant.admin.v1"
        );
    }
}

/// Encoded `FileDescriptorSet` of every file of the protocol, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("domain_descriptor");

/// Protocol version string exchanged in the sequencer handshake and written into connection
/// bundles. "2" since the protocol was split into one package per surface (docs/protocol.md):
/// the previous release, one package, had another version string and another wire layout.
pub const PROTOCOL_VERSION: &str = "2";
