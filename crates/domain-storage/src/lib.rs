//! PostgreSQL access for every component: the `[database]` config section, connection
//! pools, dedicated connections, migrations and the start-up safety checks.
//!
//! # Which driver for what
//!
//! Two drivers, each with one job:
//!
//! - **sqlx** ([`connect_sqlx`]): migrations and low-rate admin queries. A small pool
//!   (at most [`SQLX_POOL_MAX_SIZE`] connections).
//! - **deadpool-postgres** ([`hot_pool`]): the hot read/write path, e.g. sequencer event
//!   writes. Built from a [`tokio_postgres::Config`] with keepalives, `tcp_user_timeout`
//!   and all three pool timeouts set, so an exhausted pool or a dead server surfaces as an
//!   error within seconds instead of a hang.
//! - **dedicated tokio-postgres connections** ([`dedicated_connection`],
//!   [`listen_connection`]): connections whose *identity* matters and so must never be
//!   pooled: leader-lease advisory locks (a session lock lives exactly as long as its
//!   connection) and `LISTEN`/`NOTIFY` subscriptions.
//!
//! Every connection gets `statement_timeout` (except while running migrations) and
//! `idle_in_transaction_session_timeout` as startup options and reports `application_name`.
//!
//! # TLS
//!
//! `sslmode` (`disable|prefer|require|verify-ca|verify-full`), `sslrootcert`, `sslcert`
//! and `sslkey`, as config keys or URL parameters, apply to every connection of both
//! drivers: tokio-postgres through [`PgTls`] (rustls, ring), sqlx through its rustls
//! feature. With a mode that requires TLS there is no plaintext fallback; a failed
//! handshake or a server without TLS fails the connection with
//! [`StorageError::Tls`], naming the settings.
//!
//! # Migrations
//!
//! Each component keeps its migrations in the workspace's top-level
//! `migrations/<component>/` directory (sequential `NNNN_description.sql` files; never edit
//! one that has been applied, sqlx verifies checksums) and embeds its own migrator:
//!
//! ```ignore
//! pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sequencer");
//!
//! let pool = domain_storage::connect_sqlx(&config.database).await?;
//! domain_storage::check_commit_mode(&pool, config.database.allow_async_commit).await?;
//! domain_storage::run_migrations(&pool, &MIGRATOR).await?;
//! let hot = domain_storage::hot_pool(&config.database)?;
//! ```
//!
//! sqlx takes a PostgreSQL advisory lock while migrating, so replicas starting together
//! are safe. The path in `sqlx::migrate!` is relative to the component crate's
//! `Cargo.toml`.
//!
//! # Tests
//!
//! Tests get a fresh database from `domain_testkit::pg::PgCluster::shared()
//! .create_database(..)` and build a config with [`DatabaseConfig::from_url`].

mod config;
mod dedicated;
mod error;
mod hot;
pub mod locks;
mod open;
mod sqlx_pool;
mod tls;

pub use config::{DatabaseConfig, DatabaseHost, DatabaseUrl, TargetSessionAttrs};
pub use dedicated::{ConnectionTask, dedicated_connection, listen_connection};
pub use error::{PoolTimeoutKind, StorageError};
pub use hot::hot_pool;
pub use open::{OpenError, open, prepare};
pub use sqlx_pool::{SQLX_POOL_MAX_SIZE, check_commit_mode, connect_sqlx, run_migrations};
pub use tls::{PgTls, PgTlsConnect, PgTlsError, PgTlsStream, SslMode, cancel_connector};

/// Re-exported so callers name the same driver versions as this crate.
pub use deadpool_postgres;
/// Re-exported so callers name the same driver versions as this crate.
pub use sqlx;
/// Re-exported so callers name the same driver versions as this crate.
pub use tokio_postgres;
