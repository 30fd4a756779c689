//! Prometheus metrics. Every name is a constant here, with its type and
//! help; labels come from bounded sets (resource, operation, HTTP method,
//! status class, configured table) — never record ids. Counters and
//! histograms live in one process-wide registry; gauges that describe the
//! database (outbox depth, dead letters, cursor age) are read at scrape time.

use std::fmt::Write;
use std::sync::{Mutex, OnceLock};

pub const CHANGES_CAPTURED: &str = "godata_bridge_changes_captured_total";
pub const CHANGES_DELIVERED: &str = "godata_bridge_changes_delivered_total";
pub const CHANGES_DEAD_LETTERED: &str = "godata_bridge_changes_dead_lettered_total";
pub const CHANGES_DEFERRED: &str = "godata_bridge_changes_deferred_total";
pub const CONFLICTS: &str = "godata_bridge_conflicts_total";
pub const GODATA_LOGIN_REFUSED: &str = "godata_bridge_godata_login_refused_total";
pub const GODATA_LOGIN_BLOCKED: &str = "godata_bridge_godata_login_blocked";
pub const DELIVERY_LATENCY: &str = "godata_bridge_delivery_latency_seconds";
pub const GODATA_REQUESTS: &str = "godata_bridge_godata_requests_total";
pub const GODATA_REQUEST_DURATION: &str = "godata_bridge_godata_request_duration_seconds";
pub const RECORDS_PULLED: &str = "godata_bridge_records_pulled_total";
pub const ROWS_WRITTEN_BACK: &str = "godata_bridge_rows_written_back_total";
pub const OUTBOX_DEPTH: &str = "godata_bridge_outbox_depth";
pub const OUTBOX_OLDEST_AGE: &str = "godata_bridge_outbox_oldest_pending_age_seconds";
pub const DEAD_LETTERS: &str = "godata_bridge_dead_letters";
pub const WRITEBACK_DEAD_LETTERS: &str = "godata_bridge_writeback_dead_letters";
pub const WRITEBACK_REFUSED: &str = "godata_bridge_writeback_refused_total";
pub const PULL_CURSOR_AGE: &str = "godata_bridge_pull_cursor_age_seconds";
pub const LEADER: &str = "godata_bridge_leader";
pub const WINDOW_PENDING: &str = "godata_bridge_window_pending";
pub const WINDOW_OLDEST_AGE: &str = "godata_bridge_window_oldest_pending_age_seconds";
pub const SLOT_LAG_BYTES: &str = "godata_bridge_slot_lag_bytes";
pub const RECONCILE_DRIFT: &str = "godata_bridge_reconcile_drift";
pub const RECONCILE_LAST_RUN: &str = "godata_bridge_reconcile_last_run_timestamp_seconds";

/// (name, type, help) of every metric.
pub const CATALOG: &[(&str, &str, &str)] = &[
    (
        CHANGES_CAPTURED,
        "counter",
        "HMIS changes the bridge captured (read from the outbox or the slot), by table and operation.",
    ),
    (
        CHANGES_DELIVERED,
        "counter",
        "HMIS changes Go.Data acknowledged, by resource and operation.",
    ),
    (
        CHANGES_DEAD_LETTERED,
        "counter",
        "HMIS changes moved to dead_letter, by resource.",
    ),
    (
        CHANGES_DEFERRED,
        "counter",
        "Delivery attempts deferred after a transient failure, by resource and error class.",
    ),
    (
        CONFLICTS,
        "counter",
        "Fields both the HMIS and Go.Data changed since the last sync, by the side that won (the losing value is in neither log nor metric).",
    ),
    (
        GODATA_LOGIN_REFUSED,
        "counter",
        "Logins Go.Data refused (wrong credentials, or the account blocked: locked=\"true\").",
    ),
    (
        GODATA_LOGIN_BLOCKED,
        "gauge",
        "1 while Go.Data refuses the bridge's login (credentials or a blocked account): no login is tried before the wait ends.",
    ),
    (
        DELIVERY_LATENCY,
        "histogram",
        "Seconds from HMIS capture to Go.Data acknowledgement.",
    ),
    (
        GODATA_REQUESTS,
        "counter",
        "Go.Data API requests, by method, route template and status class.",
    ),
    (
        GODATA_REQUEST_DURATION,
        "histogram",
        "Go.Data API request duration in seconds, by method and route template.",
    ),
    (
        RECORDS_PULLED,
        "counter",
        "Go.Data records pulled, by resource.",
    ),
    (
        ROWS_WRITTEN_BACK,
        "counter",
        "HMIS rows changed by the write-back, by table.",
    ),
    (OUTBOX_DEPTH, "gauge", "Changes waiting in the outbox."),
    (
        OUTBOX_OLDEST_AGE,
        "gauge",
        "Age in seconds of the oldest change waiting in the outbox.",
    ),
    (DEAD_LETTERS, "gauge", "Changes in dead_letter."),
    (
        WRITEBACK_DEAD_LETTERS,
        "gauge",
        "Go.Data records a write-back target refused, set aside in writeback_dead_letter (alert on > 0).",
    ),
    (
        WRITEBACK_REFUSED,
        "counter",
        "Go.Data records a write-back target refused (each version of a record once), by table.",
    ),
    (
        PULL_CURSOR_AGE,
        "gauge",
        "Seconds since the case pull cursor last moved.",
    ),
    (
        LEADER,
        "gauge",
        "1 when this instance is the working one, 0 on standby.",
    ),
    (
        WINDOW_PENDING,
        "gauge",
        "Logical mode: changes received from the slot and not yet acknowledged (held in memory).",
    ),
    (
        WINDOW_OLDEST_AGE,
        "gauge",
        "Logical mode: seconds since the oldest change held in memory was committed.",
    ),
    (
        SLOT_LAG_BYTES,
        "gauge",
        "Logical mode: bytes of WAL after the slot's confirmed position.",
    ),
    (
        RECONCILE_DRIFT,
        "gauge",
        "Differences the last scheduled reconcile found, by direction and category (alert on > 0).",
    ),
    (
        RECONCILE_LAST_RUN,
        "gauge",
        "When the last scheduled reconcile finished (Unix seconds).",
    ),
];

/// Histogram bucket bounds in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

type Labels = Vec<(String, String)>;

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Series are few (bounded labels): a scan finds one without building a
/// key, so recording allocates only for a new series.
#[derive(Default)]
struct Registry {
    counters: Vec<((&'static str, Labels), f64)>,
    histograms: Vec<((&'static str, Labels), Histogram)>,
    /// Gauges this process sets itself (the others are read at scrape).
    gauges: Vec<((&'static str, Labels), f64)>,
}

fn same(have: &Labels, want: &[(&str, &str)]) -> bool {
    have.len() == want.len()
        && have
            .iter()
            .zip(want)
            .all(|((k, v), (wk, wv))| k == wk && v == wv)
}

/// The series `name{l}` of `series`, added if new.
fn series<'a, T: Default>(
    series: &'a mut Vec<((&'static str, Labels), T)>,
    name: &'static str,
    l: &[(&str, &str)],
) -> &'a mut T {
    let at = match series
        .iter()
        .position(|((n, have), _)| *n == name && same(have, l))
    {
        Some(i) => i,
        None => {
            series.push(((name, labels(l)), T::default()));
            series.len() - 1
        }
    };
    &mut series[at].1
}

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Registry::default()))
}

fn labels(l: &[(&str, &str)]) -> Labels {
    l.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Adds `by` to a counter.
pub fn inc(name: &'static str, l: &[(&str, &str)], by: f64) {
    let mut r = registry().lock().expect("metrics lock");
    *series(&mut r.counters, name, l) += by;
}

/// Sets a gauge this process keeps.
pub fn set(name: &'static str, l: &[(&str, &str)], value: f64) {
    let mut r = registry().lock().expect("metrics lock");
    *series(&mut r.gauges, name, l) = value;
}

/// Records one observation in a histogram.
pub fn observe(name: &'static str, l: &[(&str, &str)], value: f64) {
    let mut r = registry().lock().expect("metrics lock");
    let h = series(&mut r.histograms, name, l);
    if h.counts.is_empty() {
        h.counts = vec![0; BUCKETS.len()];
    }
    for (i, b) in BUCKETS.iter().enumerate() {
        if value <= *b {
            h.counts[i] += 1;
        }
    }
    h.sum += value;
    h.count += 1;
}

fn fmt_labels(l: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('"', "\\\"")))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// The Prometheus text exposition, with `gauges` read by the caller.
pub fn render(gauges: &[(&'static str, f64)]) -> String {
    let r = registry().lock().expect("metrics lock");
    let mut counters: Vec<_> = r.counters.iter().collect();
    counters.sort_by(|a, b| a.0.cmp(&b.0));
    let mut histograms: Vec<_> = r.histograms.iter().collect();
    histograms.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    for (name, kind, help) in CATALOG {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for ((n, l), v) in &counters {
            if n == name {
                let _ = writeln!(out, "{name}{} {v}", fmt_labels(l, None));
            }
        }
        for ((n, l), h) in &histograms {
            if n == name {
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {}",
                        fmt_labels(l, Some(("le", b.to_string()))),
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    fmt_labels(l, Some(("le", "+Inf".into()))),
                    h.count
                );
                let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(l, None), h.sum);
                let _ = writeln!(out, "{name}_count{} {}", fmt_labels(l, None), h.count);
            }
        }
        for ((n, l), v) in &r.gauges {
            if n == name {
                let _ = writeln!(out, "{name}{} {v}", fmt_labels(l, None));
            }
        }
        for (n, v) in gauges {
            if n == name {
                let _ = writeln!(out, "{name} {v}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        inc(ROWS_WRITTEN_BACK, &[("table", "t_test_render")], 2.0);
        observe(DELIVERY_LATENCY, &[], 0.02);
        let text = render(&[(OUTBOX_DEPTH, 7.0)]);
        assert!(text.contains("godata_bridge_rows_written_back_total{table=\"t_test_render\"} 2"));
        assert!(text.contains("godata_bridge_delivery_latency_seconds_bucket{le=\"0.025\"}"));
        assert!(text.contains("godata_bridge_outbox_depth 7"));
        assert!(text.contains("# TYPE godata_bridge_leader gauge"));
    }
}
