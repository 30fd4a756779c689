//! The module graph has no cycle: capture sources feed delivery, delivery
//! never reaches back into capture, and so on (a module is a top-level
//! file, or a file under `capture/`, `writeback/`, `godata/`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn module_of(rel: &str) -> String {
    let parts: Vec<&str> = rel.trim_end_matches(".rs").split('/').collect();
    match parts.as_slice() {
        [dir, "mod"] => dir.to_string(),
        [dir, file] => format!("{dir}::{file}"),
        [file] => file.to_string(),
        _ => parts.join("::"),
    }
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_module_graph_has_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    sources(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(f.strip_prefix(&src).unwrap().to_str().unwrap()))
        .collect();
    let path = regex::Regex::new(r"crate::([a-z_0-9]+)(?:::([a-z_0-9]+))?").unwrap();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let m = module_of(f.strip_prefix(&src).unwrap().to_str().unwrap());
        if m == "lib" || m == "main" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        // Unit tests may reach anywhere.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for c in path.captures_iter(code) {
            let sub = c.get(2).map(|s| format!("{}::{}", &c[1], s.as_str()));
            let to = match sub {
                Some(s) if modules.contains(&s) => s,
                _ => c[1].to_string(),
            };
            if to != m {
                edges.entry(m.clone()).or_default().insert(to);
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for next in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        if let Some(cycle) = visit(m, &edges, &mut vec![], &mut done) {
            panic!("module cycle: {}", cycle.join(" -> "));
        }
    }
    assert!(
        edges["capture::logical"].contains("deliver")
            && !edges["deliver"].iter().any(|d| d.starts_with("capture")),
        "capture feeds delivery, never the other way: {edges:?}"
    );
}
