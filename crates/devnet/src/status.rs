//! What devnet prints about the running domain.

use std::time::Duration;

use crate::net::{Devnet, is_ready};
use crate::procs;

impl Devnet {
    /// Prints every component with its role, endpoints and whether `/metrics` answers;
    /// returns whether every metrics endpoint answered.
    pub async fn print_status(&mut self) -> bool {
        let mut all_ok = true;
        let mut rows = vec![[
            "component".to_string(),
            "role".to_string(),
            "gRPC endpoint".to_string(),
            "metrics URL".to_string(),
            "metrics".to_string(),
        ]];
        for comp in &mut self.components {
            let role = match comp.exited() {
                Some(status) => format!("exited ({status})"),
                None => comp.kind.role(is_ready(&comp.ops).await).to_string(),
            };
            let metrics_url = format!("{}/metrics", comp.ops);
            let metrics = match domain_probe::get(&metrics_url, Duration::from_secs(3)).await {
                Ok(r) if r.status == 200 && r.body.contains("# TYPE") => {
                    let series = r
                        .body
                        .lines()
                        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                        .count();
                    format!("metrics ok ({series} series)")
                }
                Ok(r) => {
                    all_ok = false;
                    format!("metrics FAILED (HTTP {})", r.status.as_u16())
                }
                Err(e) => {
                    all_ok = false;
                    format!("metrics FAILED ({e})")
                }
            };
            rows.push([
                comp.name.clone(),
                role,
                comp.grpc.clone(),
                metrics_url,
                metrics,
            ]);
        }
        let widths: Vec<usize> = (0..5)
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        say!(self, "status of every process:");
        for row in &rows {
            let line = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ");
            println!("    {}", line.trim_end());
        }
        all_ok
    }

    pub async fn print_participants(&self) {
        for p in &self.participants {
            let out = procs::run(
                &self.bin("participant"),
                &["status", "--admin-endpoint", &p.admin],
                &self.dir,
                &self.setup_log(),
                Duration::from_secs(15),
            )
            .await;
            match out {
                Ok(o) if o.status.success() => {
                    let field = |key: &str| {
                        o.stdout
                            .lines()
                            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
                            .unwrap_or_default()
                    };
                    say!(
                        self,
                        "{}: committed transactions {}, last counter {}",
                        p.name,
                        field("committed transactions:"),
                        field("last counter:")
                    );
                }
                Ok(o) => say!(self, "{}: status failed: {}", p.name, o.stderr.trim()),
                Err(e) => say!(self, "{}: status failed: {e:#}", p.name),
            }
        }
    }
}
