//! `godata-bridge bench`: measurements on this machine, printed as a table
//! and written as JSON rows `{scenario, figure, value, unit, target, met,
//! baseline, ratio}`. Every figure comes from a run; a scenario that is not
//! implemented yet is reported as such (a row with a null value), never
//! with a made-up number. Timings are never asserted in tests.

use serde::Serialize;

mod backlog;
mod capture;
mod env;
mod lab_results;
mod latency;
mod reconcile;
mod throughput;
mod update_size;
mod writeback;

/// One printed row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub figure: String,
    pub value: Option<f64>,
    pub unit: String,
    pub target: String,
    pub met: Option<bool>,
    pub baseline: Option<f64>,
    pub ratio: Option<f64>,
}

pub(super) fn row(
    scenario: &str,
    figure: &str,
    value: Option<f64>,
    unit: &str,
    target: &str,
) -> Row {
    Row {
        scenario: scenario.into(),
        figure: figure.into(),
        value,
        unit: unit.into(),
        target: target.into(),
        met: None,
        baseline: None,
        ratio: None,
    }
}

/// `r` compared with `baseline`: ratio and whether the target was met.
pub(super) fn against(mut r: Row, baseline: f64, met: bool) -> Row {
    r.ratio = r.value.map(|v| v / baseline);
    r.baseline = Some(baseline);
    r.met = Some(met);
    r
}

/// All scenarios the issue names, in order.
pub const SCENARIOS: &[&str] = &[
    "latency",
    "throughput",
    "capture-overhead",
    "capture-wal",
    "update-size",
    "writeback",
    "backlog",
    "reconcile",
    "lab-results",
];

/// Runs `scenario` (or all) and returns the rows.
pub async fn run(scenario: &str, quick: bool) -> anyhow::Result<Vec<Row>> {
    let mut rows = vec![];
    for s in SCENARIOS {
        if scenario != "all" && scenario != *s {
            continue;
        }
        match *s {
            "capture-overhead" => rows.extend(capture::capture_overhead(quick).await?),
            "capture-wal" => rows.extend(capture::capture_wal(quick).await?),
            "update-size" => rows.extend(update_size::update_size(quick).await?),
            "writeback" => rows.extend(writeback::writeback(quick).await?),
            "latency" => rows.extend(latency::latency(quick).await?),
            "throughput" => rows.extend(throughput::throughput(quick).await?),
            "backlog" => rows.extend(backlog::backlog(quick).await?),
            "reconcile" => rows.extend(reconcile::reconcile(quick).await?),
            "lab-results" => rows.extend(lab_results::lab_results(quick).await?),
            other => rows.push(row(other, "not available yet", None, "", "see issue 7")),
        }
    }
    if rows.is_empty() {
        anyhow::bail!(
            "unknown scenario `{scenario}`; one of: all, {}",
            SCENARIOS.join(", ")
        );
    }
    Ok(rows)
}

/// The middle value (the upper one of an even count).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A target share of a baseline, printed as `>= 75% of baseline`.
pub(super) struct Percent(f64);

impl std::fmt::Display for Percent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, ">= {:.0}% of baseline", self.0 * 100.0)
    }
}

/// The table the command prints.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<18} {:<72} {:>12} {:<7} {:<24} {:<5} {:>10} {:>7}\n",
        "scenario", "figure", "value", "unit", "target", "met", "baseline", "ratio"
    );
    for r in rows {
        let num = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<18} {:<72} {:>12} {:<7} {:<24} {:<5} {:>10} {:>7}\n",
            r.scenario,
            r.figure,
            num(r.value),
            r.unit,
            r.target,
            r.met.map(|m| if m { "yes" } else { "NO" }).unwrap_or("-"),
            num(r.baseline),
            num(r.ratio)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_serialize_with_the_issue_keys() {
        let mut r = row("writeback", "x", Some(2.0), "rows/s", ">= 2x");
        r.baseline = Some(1.0);
        r.ratio = Some(2.0);
        r.met = Some(true);
        let v = serde_json::to_value(&r).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["scenario", "figure", "value", "unit", "target", "met", "baseline", "ratio"]
        );
        let missing = row("latency", "not available yet", None, "", "see issue 7");
        assert_eq!(
            serde_json::to_value(&missing).unwrap()["value"],
            serde_json::Value::Null
        );
        assert!(table(&[r, missing]).contains("not available yet"));
    }
}
