//! HAP's own counters, summed over every process and every incarnation of it: each process's
//! `/metrics` is read every second, and a counter found lower than before means the process
//! was started again, so its last value is banked. What a process counted in the second before
//! it was killed is lost, so the sums are lower bounds.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::processes::Endpoint;

const EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Clone, Copy)]
struct Series {
    last: f64,
    /// The sum of the values reached by earlier incarnations.
    banked: f64,
}

/// Reads the counters of a set of processes.
pub struct Scraper {
    http: reqwest::Client,
    targets: Vec<Endpoint>,
    /// (target, series as printed, e.g. `hap_saga_steps_total{…}`) → value.
    series: Mutex<BTreeMap<(usize, String), Series>>,
}

impl Scraper {
    pub fn new(targets: Vec<Endpoint>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(EVERY)
            .build()
            .context("Failed to build the metrics client")?;
        Ok(Self {
            http,
            targets,
            series: Mutex::new(BTreeMap::new()),
        })
    }

    /// Reads every target every second until `stop`.
    pub async fn run(&self, stop: CancellationToken) {
        loop {
            self.scrape().await;
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(EVERY) => {}
            }
        }
    }

    /// Reads every target that is up once.
    pub async fn scrape(&self) {
        let texts = futures::future::join_all(self.targets.iter().enumerate().map(
            |(index, endpoint)| async move {
                let address = endpoint.get()?;
                let response = self
                    .http
                    .get(format!("http://{address}/metrics"))
                    .send()
                    .await
                    .ok()?;
                Some((index, response.text().await.ok()?))
            },
        ))
        .await;
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for (index, text) in texts.into_iter().flatten() {
            for (name, value) in counters(&text) {
                let entry = series.entry((index, name)).or_default();
                if value < entry.last {
                    entry.banked += entry.last;
                }
                entry.last = value;
            }
        }
    }

    /// The sum over every process and incarnation of the counter `metric`, over its series
    /// whose labels contain every one of `labels` (as `name="value"`).
    pub fn total(&self, metric: &str, labels: &[&str]) -> u64 {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let sum: f64 = series
            .iter()
            .filter(|((_, name), _)| {
                let (base, rest) = name.split_once('{').unwrap_or((name, ""));
                base == metric && labels.iter().all(|label| rest.contains(label))
            })
            .map(|(_, s)| s.banked + s.last)
            .sum();
        // Counters are whole numbers; an empty sum is -0.0.
        sum.round() as u64
    }
}

/// The `hap_*_total` samples of a Prometheus text page, as (series, value).
fn counters(text: &str) -> impl Iterator<Item = (String, f64)> + '_ {
    text.lines()
        .filter(|line| line.starts_with("hap_"))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            let base = name.split_once('{').map_or(name, |(base, _)| base);
            base.ends_with("_total")
                .then(|| Some((name.to_owned(), value.parse().ok()?)))?
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_counters_are_read() {
        let page = "# TYPE hap_saga_steps_total counter\n\
                    hap_saga_steps_total{service=\"patient-service\",outcome=\"retried\"} 3\n\
                    hap_publisher_leader 1\n\
                    hap_saga_step_seconds_bucket{le=\"0.5\"} 9\n\
                    hap_publisher_published_total 12\n";
        let read: Vec<_> = counters(page).collect();
        assert_eq!(
            read,
            vec![
                (
                    "hap_saga_steps_total{service=\"patient-service\",outcome=\"retried\"}"
                        .to_owned(),
                    3.0
                ),
                ("hap_publisher_published_total".to_owned(), 12.0),
            ]
        );
    }
}
