//! Test support: a throwaway PostgreSQL cluster with a database per test, rcgen
//! certificates, a harness that spawns the real binaries and waits on gRPC
//! health, and a multi-instance sequencer cluster built on them.

pub mod certs;
pub mod cluster;
pub mod domain_manager;
pub mod netns;
pub mod pg;
pub mod pg_ha;
pub mod process;
