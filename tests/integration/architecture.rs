//! The Architecture Invariants of ARCHITECTURE.md, checked against the source: which folder of
//! `src/` may import which, that the request path reaches the recorder only through its queue,
//! that only the recorder writes the store, and that no files import each other in a circle.
//! The check reads `crate::` paths as text (test modules left out), as a reviewer would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each folder (or top-level file) of `src/` may import from the others.
const ALLOWED: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("formats", &["model"]),
    ("config", &["model", "formats"]),
    ("policy", &["model", "formats", "config"]),
    ("store", &["model"]),
    ("upstream", &["model", "config"]),
    ("record", &["model", "formats", "config", "policy", "store"]),
    ("proxy", &["model", "formats", "config", "policy", "upstream", "record"]),
    ("admin", &["model", "formats", "config", "store", "record", "cluster"]),
    ("export", &["model", "formats", "config", "store", "record", "upstream"]),
    ("cluster", &["model", "config", "policy", "store", "record"]),
    ("mock_llm", &["formats"]),
    ("cli", &["model", "config", "admin", "mock_llm"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/` but test-only files, with its text up to its test module.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src(), &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|p| p.file_name().unwrap() != "tests.rs")
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let code = match text.find("#[cfg(test)]\nmod tests") {
                Some(at) => text[..at].to_string(),
                None => text,
            };
            (p.strip_prefix(src()).unwrap().to_string_lossy().into_owned(), code)
        })
        .collect()
}

/// The `crate::a::b::...` paths a file names, as their segments.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let path: String =
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
            paths.push(path.split("::").filter(|s| !s.is_empty()).map(str::to_string).collect());
        }
    }
    paths
}

/// The folder (or top-level file) a source file belongs to: `proxy` for `proxy/phases.rs`.
fn floor(file: &str) -> &str {
    file.split('/').next().unwrap().trim_end_matches(".rs")
}

/// The file a `crate::` path lands in: the longest prefix that is a file or folder module.
fn file_of(path: &[String]) -> Option<String> {
    for len in (1..=path.len()).rev() {
        let joined = path[..len].join("/");
        for candidate in [format!("{joined}.rs"), format!("{joined}/mod.rs")] {
            if src().join(&candidate).is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

#[test]
fn folders_import_only_the_floors_below_them() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut broken = Vec::new();
    for (file, code) in sources() {
        let from = floor(&file);
        let Some(may) = allowed.get(from) else { continue }; // server, main, lib: the top
        for path in crate_paths(&code) {
            let to = path[0].as_str();
            if to != from && !may.contains(&to) {
                broken.push(format!("{file} imports crate::{}", path.join("::")));
            }
        }
    }
    assert!(broken.is_empty(), "imports against ARCHITECTURE.md's invariants:\n{}", broken.join("\n"));
}

#[test]
fn the_request_path_reaches_the_recorder_only_through_its_queue() {
    let mut broken = Vec::new();
    for (file, code) in sources().into_iter().filter(|(f, _)| floor(f) == "proxy") {
        for path in crate_paths(&code).into_iter().filter(|p| p[0] == "record") {
            if path.get(1).map(String::as_str) != Some("queue") {
                broken.push(format!("{file} names crate::{}", path.join("::")));
            }
        }
    }
    assert!(broken.is_empty(), "the proxy may name only record::queue:\n{}", broken.join("\n"));
}

#[test]
fn only_the_recorder_writes_the_store() {
    let writes = ["write_batch(", "delete_older_than(", "store.flush(", "store.set_export_cursor("];
    let mut broken = Vec::new();
    for (file, code) in sources() {
        if ["store", "record"].contains(&floor(&file)) {
            continue;
        }
        for write in writes.iter().filter(|w| code.contains(*w)) {
            broken.push(format!("{file} calls {write}"));
        }
    }
    assert!(broken.is_empty(), "store writes outside record/:\n{}", broken.join("\n"));
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, code) in sources() {
        let targets = crate_paths(&code).iter().filter_map(|p| file_of(p)).filter(|t| *t != file).collect();
        graph.insert(file, targets);
    }
    // Depth-first search for a back edge; the circle is reported as the path that closes it.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|n| n == next).unwrap();
                    return Some(stack[at..].iter().cloned().chain([next.clone()]).collect());
                }
                Some(_) => {}
                None => {
                    if let Some(circle) = visit(next, graph, state, stack) {
                        return Some(circle);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node.as_str()) {
            if let Some(circle) = visit(node, &graph, &mut state, &mut Vec::new()) {
                panic!("files import each other in a circle: {}", circle.join(" -> "));
            }
        }
    }
}
