//! `mediator` binary: parses config, installs telemetry, and runs one replica.

use domain_mediator::{Listeners, MediatorConfig};
use domain_runtime::config::load_or_exit;
use domain_runtime::service::{KeyCommand, ServiceCli};

fn main() {
    let cli = ServiceCli::<KeyCommand>::parse_with(|command| {
        command
            .name("mediator")
            .about("An active-passive mediator replica of a Canton-style domain")
            .mut_subcommand("generate-key", |generate| {
                generate.about(
                    "Generates the mediator signing key shared by all replicas (PKCS#8 PEM, \
                     mode 0600) and prints its fingerprint",
                )
            })
    });
    if let Some(command) = cli.command {
        return command.run();
    }
    let config: MediatorConfig = load_or_exit("mediator", "MEDIATOR", &cli.common);
    let problem = config
        .validate()
        .map_err(|p| format!("invalid mediator configuration: {p}"));
    // `member` tells mediator groups apart: a second group (another mediator id) in the same
    // namespace has its own lease and its own active replica.
    let mut labels = cli.common.metric_labels();
    labels.push(("member", config.name.clone()));
    domain_runtime::service::launch("mediator", &cli.common, &config.tracing, problem, || {
        domain_runtime::service::serve_service(
            "mediator",
            &labels,
            // Wider buckets for the decision latency: it reaches the participant response
            // timeout (30 s by default).
            &[(
                domain_mediator::DECISION_LATENCY,
                domain_mediator::DECISION_BUCKETS,
            )],
            async { Ok(Listeners::bind(&config.admin_api, config.ops_listen).await?) },
            |started| domain_mediator::run(config.clone(), started),
        )
    })
}
