//! Test support: a throwaway PostgreSQL cluster with a database per test, rcgen
//! certificates, and a harness that spawns the real binaries and waits on gRPC
//! health. The local domain built on them (sequencer cluster, domain managers, the
//! services' config files) is `domain-localnet`.

pub mod certs;
pub mod netns;
pub mod pg;
pub mod pg_ha;
pub mod process;
