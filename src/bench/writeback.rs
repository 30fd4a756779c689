//! Write-back: the staged array upsert against multi-row VALUES and
//! one upsert per row.

use std::time::Instant;

use serde_json::json;

use super::env::*;
use super::{against, median, row, Row};

/// Write-back of pages of Go.Data cases into `hmis.tbl_cases`: the staged
/// array upsert (one text array per column, `unnest`) against a multi-row `INSERT … VALUES … ON CONFLICT` (what
/// OpenFn's `upsertMany` does) and one upsert per row.
pub(super) async fn writeback(quick: bool) -> anyhow::Result<Vec<Row>> {
    use crate::writeback::fhir::{case_bundle, FhirOptions};
    use crate::writeback::target::{self, Sources};
    let n = if quick { 2_000 } else { 10_000 };
    let cluster = durable_cluster().await?;
    fresh_hmis(&cluster, "bench_wb", false).await?;
    let mut c = connect(&cluster, "bench_wb").await?;
    let config = crate::config::Config::parse(
        include_str!("../../examples/bridge.toml"),
        "examples/bridge.toml",
        &BenchEnv,
    )?;
    let t = config
        .pull
        .target
        .iter()
        .find(|t| t.table == "hmis.tbl_cases")
        .expect("reference target")
        .clone();
    let o = FhirOptions::default();
    let now = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let records: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            json!({"id": uuid::Uuid::new_v4().to_string(), "firstName": format!("P{i}"), "lastName": "Kamara",
                   "gender": "LNG_REFERENCE_DATA_CATEGORY_GENDER_FEMALE", "dob": "1990-04-12T00:00:00.000Z",
                   "visualId": format!("CA-{i:010}"), "updatedAt": now, "dbUpdatedAt": now,
                   "classification": "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_CONFIRMED",
                   "addresses": [{"typeId": "LNG_REFERENCE_DATA_CATEGORY_ADDRESS_TYPE_USUAL_PLACE_OF_RESIDENCE",
                                  "city": "Bo", "phoneNumber": "+23276123456"}]})
        })
        .collect();
    let rows: Vec<Vec<Option<String>>> = records
        .iter()
        .map(|r| {
            target::row(
                &t,
                &Sources {
                    bundle: &case_bundle(r, &o),
                    godata: r,
                },
                o.timezone,
            )
        })
        .collect();
    let s = "writeback";
    // Ours and the multi-row VALUES upsert alternate in rounds, each into an
    // emptied table; each figure is the median of its rounds.
    let lit = |v: &Option<String>| match v {
        None => "NULL".to_string(),
        Some(s) => format!("'{}'", s.replace('\'', "''")),
    };
    let cols: Vec<&str> = t.columns.iter().map(|c| c.column.as_str()).collect();
    // Both baselines: a row as a VALUES tuple of literals, and the upsert
    // of some tuples.
    let tuple = |r: &[Option<String>]| {
        let values: Vec<String> = r[..cols.len()].iter().map(lit).collect();
        format!("({})", values.join(", "))
    };
    let set: Vec<String> = cols
        .iter()
        .filter(|c| **c != "externalid")
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    let upsert = |values: &str| {
        format!(
            "INSERT INTO hmis.tbl_cases ({}) VALUES {values} ON CONFLICT (externalid) DO UPDATE SET {}",
            cols.join(", "),
            set.join(", ")
        )
    };
    let (mut ours, mut multi, mut bare) = (vec![], vec![], vec![]);
    for _ in 0..if quick { 1 } else { 3 } {
        // Ours, as the pull writes a page: one Bind of text arrays + one
        // INSERT … SELECT unnest(…) ON CONFLICT, under a savepoint.
        c.batch_execute("TRUNCATE hmis.tbl_cases").await?;
        let started = Instant::now();
        let tx = c.transaction().await?;
        target::write_guarded(&tx, &t, &rows, &[], None, None).await?;
        tx.commit().await?;
        ours.push(n as f64 / started.elapsed().as_secs_f64());
        // The same statement without the savepoint (what the guard costs).
        c.batch_execute("TRUNCATE hmis.tbl_cases").await?;
        let started = Instant::now();
        let tx = c.transaction().await?;
        target::write(&tx, &t, &rows, &[], None, None).await?;
        tx.commit().await?;
        bare.push(n as f64 / started.elapsed().as_secs_f64());
        // Multi-row VALUES upsert (one statement per 1,000 rows, all columns).
        c.batch_execute("TRUNCATE hmis.tbl_cases").await?;
        let started = Instant::now();
        for chunk in rows.chunks(1000) {
            let values: Vec<String> = chunk.iter().map(|r| tuple(r)).collect();
            c.batch_execute(&upsert(&values.join(", "))).await?;
        }
        multi.push(n as f64 / started.elapsed().as_secs_f64());
    }
    let (ours, multi, bare) = (median(ours), median(multi), median(bare));
    // One record the target refuses (a NUL in its name) in the middle: the
    // statement fails, the page is bisected down to it, the rest written.
    let mut poisoned = rows.clone();
    let name_at = cols.iter().position(|c| *c == "name").expect("name column");
    poisoned[n / 2][name_at] = Some("Ami\u{0}nata".into());
    c.batch_execute("TRUNCATE hmis.tbl_cases").await?;
    let started = Instant::now();
    let tx = c.transaction().await?;
    let (_, refused) = target::write_guarded(&tx, &t, &poisoned, &[], None, None).await?;
    tx.commit().await?;
    let bisected = n as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(refused.len() == 1, "one refused row, got {}", refused.len());
    // The server's own floor for these rows: the same upsert from a table
    // already on the server (the Bundle as text, parsed on insert as ours
    // is, same compression), no client and no transfer at all.
    let as_text = |c: &&str| {
        if *c == "fhir" {
            "fhir::text AS fhir".to_string()
        } else {
            c.to_string()
        }
    };
    let from_text = |c: &&str| {
        if *c == "fhir" {
            "fhir::jsonb".to_string()
        } else {
            c.to_string()
        }
    };
    c.batch_execute(&format!(
        "CREATE TEMP TABLE wb_src AS SELECT {} FROM hmis.tbl_cases; TRUNCATE hmis.tbl_cases",
        cols.iter().map(as_text).collect::<Vec<_>>().join(", ")
    ))
    .await?;
    let started = Instant::now();
    c.batch_execute(&format!(
        "BEGIN;
         {};
         INSERT INTO hmis.tbl_cases ({}) SELECT {} FROM wb_src ON CONFLICT (externalid) DO NOTHING;
         COMMIT",
        target::LZ4_FOR_THIS_TRANSACTION,
        cols.join(", "),
        cols.iter().map(from_text).collect::<Vec<_>>().join(", ")
    ))
    .await?;
    let floor = n as f64 / started.elapsed().as_secs_f64();
    // Row by row.
    c.batch_execute("TRUNCATE hmis.tbl_cases").await?;
    let started = Instant::now();
    for r in &rows {
        c.batch_execute(&upsert(&tuple(r))).await?;
    }
    let single = n as f64 / started.elapsed().as_secs_f64();
    let mut out = vec![];
    out.push(against(
        row(
            s,
            &format!("staged array upsert (unnest), {n} cases"),
            Some(ours),
            "rows/s",
            ">= 2x multi-row VALUES",
        ),
        multi,
        ours >= 2.0 * multi,
    ));
    out.push(row(
        s,
        "the same upsert without the savepoint that lets a bad record be set aside",
        Some(bare),
        "rows/s",
        "measured",
    ));
    out.push(row(
        s,
        &format!("the same page with one refused record (bisected, set aside), {n} cases"),
        Some(bisected),
        "rows/s",
        "measured",
    ));
    out.push(row(
        s,
        "multi-row INSERT … VALUES … ON CONFLICT (upsertMany)",
        Some(multi),
        "rows/s",
        "baseline",
    ));
    out.push(against(
        row(
            s,
            "staged array upsert vs row by row",
            Some(ours),
            "rows/s",
            ">= 20x row by row",
        ),
        single,
        ours >= 20.0 * single,
    ));
    // Not a target: what the server alone needs for these rows, against
    // row by row. Ours can come close to it, never above it.
    let mut floor_row = row(
        s,
        "server floor: INSERT … SELECT from a table on the server",
        Some(floor),
        "rows/s",
        "(no client; bounds ours)",
    );
    floor_row.baseline = Some(single);
    floor_row.ratio = Some(floor / single);
    out.push(floor_row);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(out)
}
