//! Scrapes a sequencer's ops port (`/metrics`, Prometheus text format) and turns
//! the difference of two scrapes into per-phase figures: mean batch size, commit
//! time and send latency, with quantiles estimated from the histogram buckets.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;

/// One scrape: series (name + labels, labels sorted as rendered) to value.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    series: BTreeMap<String, f64>,
}

/// Fetches `http://host:port/metrics`.
pub async fn scrape(ops_url: &str) -> anyhow::Result<Scrape> {
    let answer = domain_probe::get_path(ops_url, "/metrics", Duration::from_secs(5)).await?;
    if answer.status != 200 {
        bail!("metrics answered {}", answer.status);
    }
    Ok(Scrape::parse(&answer.body))
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let mut series = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some((key, value)) = line.rsplit_once(' ')
                && let Ok(v) = value.parse::<f64>()
            {
                series.insert(key.to_string(), v);
            }
        }
        Self { series }
    }

    /// Sum of every series of metric `name` whose labels contain all of `with`
    /// (e.g. `outcome="sequenced"`).
    pub fn sum(&self, name: &str, with: &[&str]) -> f64 {
        self.series
            .iter()
            .filter(|(k, _)| {
                let (n, labels) = split_key(k);
                n == name && with.iter().all(|w| labels.contains(w))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Cumulative histogram buckets (`le` upper bound, count) of metric `name`.
    fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for (k, v) in &self.series {
            let (n, labels) = split_key(k);
            if n != bucket {
                continue;
            }
            let Some(le) = labels
                .split("le=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
            else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            let e = by_le.entry(le.to_bits()).or_insert((le, 0.0));
            e.1 += v;
        }
        let mut out: Vec<(f64, f64)> = by_le.into_values().collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

fn split_key(k: &str) -> (&str, &str) {
    match k.find('{') {
        Some(i) => (&k[..i], &k[i..]),
        None => (k, ""),
    }
}

/// A histogram over the interval between two scrapes of one or more instances.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HistogramDelta {
    pub count: f64,
    pub mean: f64,
    /// Quantiles interpolated linearly inside the Prometheus buckets (coarse).
    pub p50: f64,
    pub p99: f64,
}

impl HistogramDelta {
    pub fn between(before: &[Scrape], after: &[Scrape], name: &str) -> Self {
        let mut count = 0.0;
        let mut sum = 0.0;
        let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for (a, b) in before.iter().zip(after) {
            count += b.sum(&format!("{name}_count"), &[]) - a.sum(&format!("{name}_count"), &[]);
            sum += b.sum(&format!("{name}_sum"), &[]) - a.sum(&format!("{name}_sum"), &[]);
            let ab: BTreeMap<u64, f64> = a
                .buckets(name)
                .into_iter()
                .map(|(le, c)| (le.to_bits(), c))
                .collect();
            for (le, c) in b.buckets(name) {
                let e = buckets.entry(le.to_bits()).or_insert((le, 0.0));
                e.1 += c - ab.get(&le.to_bits()).copied().unwrap_or(0.0);
            }
        }
        let mut cum: Vec<(f64, f64)> = buckets.into_values().collect();
        cum.sort_by(|a, b| a.0.total_cmp(&b.0));
        let q = |q: f64| quantile(&cum, count, q);
        Self {
            count,
            mean: if count > 0.0 { sum / count } else { 0.0 },
            p50: q(0.5),
            p99: q(0.99),
        }
    }
}

fn quantile(cum: &[(f64, f64)], count: f64, q: f64) -> f64 {
    if count <= 0.0 {
        return 0.0;
    }
    let target = q * count;
    let mut prev_le = 0.0;
    let mut prev_c = 0.0;
    for &(le, c) in cum {
        if c >= target {
            if le.is_infinite() {
                return prev_le;
            }
            let width = c - prev_c;
            let frac = if width > 0.0 {
                (target - prev_c) / width
            } else {
                1.0
            };
            return prev_le + (le - prev_le) * frac;
        }
        prev_le = le;
        prev_c = c;
    }
    prev_le
}

/// Sequencer-side figures of one phase, summed over instances.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SequencerMetrics {
    pub batch_size: HistogramDelta,
    pub commit_seconds: HistogramDelta,
    pub send_latency_seconds: HistogramDelta,
    pub sends_sequenced: f64,
    pub events_read: f64,
    pub events_delivered: f64,
    pub subscribers_cut: f64,
    pub checkpoints_written: f64,
    pub send_rejections: f64,
}

impl SequencerMetrics {
    pub fn between(before: &[Scrape], after: &[Scrape]) -> Self {
        let counter = |name: &str, with: &[&str]| -> f64 {
            before
                .iter()
                .zip(after)
                .map(|(a, b)| b.sum(name, with) - a.sum(name, with))
                .sum()
        };
        Self {
            batch_size: HistogramDelta::between(before, after, "sequencer_batch_size"),
            commit_seconds: HistogramDelta::between(before, after, "sequencer_commit_seconds"),
            send_latency_seconds: HistogramDelta::between(
                before,
                after,
                "sequencer_send_latency_seconds",
            ),
            sends_sequenced: counter("sequencer_sends_total", &["outcome=\"sequenced\""]),
            events_read: counter("sequencer_events_read_total", &[]),
            events_delivered: counter("sequencer_events_delivered_total", &[]),
            subscribers_cut: counter("sequencer_subscribers_cut_total", &[]),
            checkpoints_written: counter("sequencer_checkpoints_written_total", &[]),
            send_rejections: counter("sequencer_send_rejections_total", &[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_delta_and_quantiles() {
        let a = Scrape::parse(
            "h_bucket{le=\"1\"} 0\nh_bucket{le=\"2\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n",
        );
        let b = Scrape::parse(
            "# HELP h x\nh_bucket{le=\"1\"} 50\nh_bucket{le=\"2\"} 100\nh_bucket{le=\"+Inf\"} 100\nh_sum 120\nh_count 100\n",
        );
        let d = HistogramDelta::between(&[a], &[b], "h");
        assert_eq!(d.count, 100.0);
        assert!((d.mean - 1.2).abs() < 1e-9);
        assert!((d.p50 - 1.0).abs() < 1e-9);
        assert!((d.p99 - 1.98).abs() < 1e-9);
    }

    #[test]
    fn counters_filter_by_label() {
        let s = Scrape::parse(
            "c{component=\"sequencer\",outcome=\"sequenced\"} 5\nc{component=\"sequencer\",outcome=\"failed\"} 2\n",
        );
        assert_eq!(s.sum("c", &["outcome=\"sequenced\""]), 5.0);
        assert_eq!(s.sum("c", &[]), 7.0);
    }
}
