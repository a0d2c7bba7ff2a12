//! Every cross-process test of the domain in one test binary. Each file below is a
//! module; nextest still runs every test in its own process.
//!
//! One binary rather than one per file because each test binary statically links the
//! whole dependency tree (tonic, tokio, rustls, tokio-postgres): thirteen of them took
//! ~2 GB of disk and their link time, and ran a CI machine out of space.

mod client_failover;
mod client_fake_sequencer;
mod devnet;
mod domain_manager;
mod fault_database;
mod fault_network;
mod fault_process;
mod history_smoke;
mod http2_abuse;
mod k8s_configs;
mod mediator_failover;
mod mediator_protocol;
mod onboarding;
mod open_registration;
mod otlp_traces;
mod participant_failover;
mod participant_ping;
mod prometheus_alerts;
mod pruning;
mod sequencer_api;
mod sequencer_faults;
mod sequencer_order;
mod sequencer_overload;
mod sequencer_resume;
mod sequencer_smoke;
mod topology_enforcement;
