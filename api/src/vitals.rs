//! What this process measured of itself, read from its own metrics for the sample its
//! heartbeat records ([`eventstore::samples`]): the console, on whichever process serves it,
//! reads every process's figures from there.

use eventstore::samples::Vitals;

/// The series of Prometheus text: metric name, labels (as written between the braces) and
/// value. Comments and lines that do not parse are left out.
fn series(text: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let value = value.parse::<f64>().ok()?;
            match key.split_once('{') {
                Some((name, labels)) => Some((name, labels.trim_end_matches('}'), value)),
                None => Some((key, "", value)),
            }
        })
}

/// The process's vitals in `metrics`, its Prometheus text.
pub fn of(metrics: &str) -> Vitals {
    let mut vitals = Vitals::default();
    for (name, labels, value) in series(metrics) {
        match name {
            "hap_commands_total" => {
                vitals.commands += value as i64;
                if labels.contains("status=\"5") {
                    vitals.command_errors += value as i64;
                }
            }
            "hap_publisher_leader" => vitals.publisher_leader = value >= 1.0,
            "hap_projector_lag_seconds" => {
                vitals.projector_lag_seconds = vitals.projector_lag_seconds.max(value);
            }
            "hap_projector_queue_depth" => vitals.queue_depth += value as i64,
            "hap_dead_letter_queue_depth" => vitals.dead_letters += value as i64,
            _ => {}
        }
    }
    vitals
}

/// This process's vitals now.
pub fn measure() -> Vitals {
    of(&crate::telemetry::metrics_handle().render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vitals_are_read_from_the_metrics_text() {
        let metrics = "\
# TYPE hap_commands_total counter
hap_commands_total{route=\"POST /patients\",status=\"201\"} 7
hap_commands_total{route=\"POST /patients\",status=\"503\"} 2
hap_commands_total{route=\"POST /consultations\",status=\"422\"} 1
hap_publisher_leader 1
hap_projector_lag_seconds{projection=\"patients\",instance=\"a\"} 0.5
hap_projector_lag_seconds{projection=\"consultations\",instance=\"a\"} 2.25
hap_projector_queue_depth{queue=\"hap.patient-service.a.events\"} 3
hap_projector_queue_depth{queue=\"hap.scheduling-service.a.events\"} 4
hap_dead_letter_queue_depth{queue=\"hap.patient-service.a.events.dlq\"} 1
hap_queries_total{route=\"GET /patients\",status=\"500\"} 9
";
        assert_eq!(
            of(metrics),
            Vitals {
                commands: 10,
                command_errors: 2,
                publisher_leader: true,
                projector_lag_seconds: 2.25,
                queue_depth: 7,
                dead_letters: 1,
            }
        );
        assert_eq!(of(""), Vitals::default());
    }
}
