//! A local domain from the real binaries, the one way devnet, the e2e tests and the
//! benches start one: each service's config written from its own config struct
//! ([`config`]), a multi-instance sequencer cluster ([`sequencers`]) and domain-manager
//! replicas in front of it ([`domain_managers`]). PostgreSQL, certificates and the process
//! harness come from `domain-testkit`.

pub mod config;
pub mod domain_managers;
pub mod sequencers;
