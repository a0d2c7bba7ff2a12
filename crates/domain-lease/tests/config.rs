//! Configuration parsing and validation.

use std::time::Duration;

use domain_lease::{LeaseConfig, LeaseError, LeaseKeeper, generate_holder};
use domain_storage::{DatabaseConfig, hot_pool};

#[test]
fn defaults_and_humantime_durations() {
    let config: LeaseConfig = toml::from_str(
        r#"
        name = "mediator"
        holder-address = "https://mediator-1:4402"
        ttl = "3s"
        poll-interval = "100ms"
        "#,
    )
    .expect("valid toml");
    assert_eq!(config.name, "mediator");
    assert_eq!(config.holder, "", "holder generated at start-up by default");
    assert_eq!(config.ttl, Duration::from_secs(3));
    assert_eq!(config.renew_interval, Duration::from_millis(500));
    assert_eq!(config.poll_interval, Duration::from_millis(100));
    assert_eq!(config.op_timeout, Duration::from_millis(500));
    config.validate().expect("valid");

    let defaults = LeaseConfig::new("mediator");
    assert_eq!(defaults.ttl, Duration::from_secs(2));
    assert_eq!(defaults.renew_interval, Duration::from_millis(500));
    assert_eq!(defaults.poll_interval, Duration::from_millis(250));
    assert_eq!(defaults.op_timeout, Duration::from_millis(500));
    assert_eq!(defaults.safety_margin(), Duration::from_millis(200));
    defaults.validate().expect("defaults are valid");

    let dumped = toml::to_string(&defaults).expect("serializable");
    assert!(dumped.contains("renew-interval = \"500ms\""), "{dumped}");
    let err = toml::from_str::<LeaseConfig>("name = \"m\"\nrenew-intervall = \"1s\"")
        .expect_err("unknown key");
    assert!(err.to_string().contains("renew-intervall"), "{err}");
}

#[test]
fn renew_interval_must_be_below_half_the_ttl() {
    let config: LeaseConfig = toml::from_str(
        r#"
        name = "mediator"
        ttl = "2s"
        renew-interval = "1s"
        "#,
    )
    .expect("valid toml");
    let err = config.validate().expect_err("renew-interval = ttl/2");
    let message = err.to_string();
    assert!(
        matches!(
            err,
            LeaseError::InvalidConfig {
                key: "renew-interval",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        message.contains("`renew-interval`") && message.contains("`ttl`"),
        "{message}"
    );
    println!("{message}");

    let ok = LeaseConfig {
        renew_interval: Duration::from_millis(999),
        ..config
    };
    ok.validate().expect("just below ttl/2");
}

#[test]
fn other_invalid_settings_name_their_key() {
    /// Makes one setting of a valid config wrong.
    type Breaks = fn(&mut LeaseConfig);
    // (the setting that is wrong, what makes it wrong in an otherwise valid config)
    let cases: [(&str, Breaks); 5] = [
        ("name", |c| *c = LeaseConfig::default()),
        ("ttl", |c| c.ttl = Duration::from_millis(50)),
        ("poll-interval", |c| c.poll_interval = Duration::ZERO),
        ("op-timeout", |c| c.op_timeout = Duration::from_secs(2)),
        ("renew-interval", |c| c.renew_interval = Duration::ZERO),
    ];
    for (expected, break_it) in cases {
        let mut config = LeaseConfig::new("m");
        break_it(&mut config);
        match config.validate() {
            Err(LeaseError::InvalidConfig { key, reason }) => {
                assert_eq!(key, expected, "{reason}");
            }
            other => panic!("{expected}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn keeper_rejects_invalid_config_and_generates_holder() {
    // The pool connects lazily; nothing here talks to a database.
    let pool = hot_pool(&DatabaseConfig::default()).expect("pool");
    let bad = LeaseConfig {
        renew_interval: Duration::from_secs(1),
        ..LeaseConfig::new("mediator")
    };
    let err = LeaseKeeper::new(pool.clone(), bad).expect_err("invalid");
    assert!(err.to_string().contains("renew-interval"), "{err}");

    let keeper = LeaseKeeper::new(pool, LeaseConfig::new("mediator")).expect("valid");
    assert!(
        keeper.holder().starts_with("mediator-"),
        "{}",
        keeper.holder()
    );
    assert!(keeper.fence().is_none());
    assert!(!keeper.handle().is_active());
    assert_ne!(generate_holder("m"), generate_holder("m"));
}
