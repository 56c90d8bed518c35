//! Architecture invariants from ARCHITECTURE.md that a machine can check.

/// A source file's code, its `//` comments left out.
fn code_of(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file under `src/` belongs to (`web` for `src/web/…`, `startup` for
/// `src/startup.rs`).
fn top_module(src: &std::path::Path, file: &std::path::Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_owned()
}

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_aws_provider_imports_the_aws_sdk() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let allowed = root.join("src/cloud/aws");
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(&allowed))
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            ["aws_sdk_ec2", "aws_config", "aws_smithy"]
                .iter()
                .any(|krate| text.contains(krate))
        })
        .map(|f| f.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "only src/cloud/aws/ may use the AWS SDK: {offenders:?}"
    );
}

#[test]
fn the_agent_knows_only_the_wire_protocol() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/agent"), &mut files);
    assert!(!files.is_empty());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for forbidden in [
            "crate::db",
            "crate::cloud",
            "crate::web",
            "crate::jobs",
            "crate::fleet",
            "sqlx",
        ] {
            assert!(
                !text.contains(forbidden),
                "{} uses {forbidden}: the agent may know only agent::wire and HTTP",
                f.display()
            );
        }
    }
}

#[test]
fn templates_have_no_inline_script_or_style() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Every <script> tag loads a file (the CSP allows no inline script).
            for (at, _) in text.match_indices("<script") {
                let tag = &text[at..at + text[at..].find('>').unwrap_or(text.len() - at)];
                assert!(
                    tag.contains(" src="),
                    "{}: inline script {tag:?}",
                    path.display()
                );
            }
            assert!(
                !text.contains("<style") && !text.contains(" style="),
                "{}: inline style",
                path.display()
            );
            // No event-handler attribute (onclick=, onload=, …).
            let handler = text.split(|c: char| c.is_whitespace()).find(|word| {
                let lower = word.to_ascii_lowercase();
                lower.starts_with("on")
                    && lower.find('=').is_some_and(|eq| {
                        eq > 2 && lower[2..eq].chars().all(|c| c.is_ascii_alphabetic())
                    })
            });
            assert!(
                handler.is_none(),
                "{}: inline event handler {handler:?}",
                path.display()
            );
        }
    }
}

/// The rooms below the web (see ARCHITECTURE.md) never import `web`: they speak
/// `crate::error::Error`, and `web` alone decides statuses and pages. Only the composition
/// roots that assemble the console (`startup`, `cli`, `bench`) may name it.
#[test]
fn nothing_below_the_web_imports_the_web() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let above = ["web", "startup", "cli", "bench", "main", "lib"];
    let mut offenders = Vec::new();
    for f in &files {
        if above.contains(&top_module(&src, f).as_str()) {
            continue;
        }
        let code = code_of(f);
        if code.contains("crate::web") || code.contains("super::web") {
            offenders.push(f.strip_prefix(&src).unwrap().display().to_string());
        }
    }
    assert!(
        offenders.is_empty(),
        "below the web, these import it: {offenders:?}"
    );
}

/// The top-level modules form layers: no two of them import each other, directly or through
/// others (`crate::x` references in code, comments left out). A cycle would mean two rooms
/// that can only be understood, and changed, together.
#[test]
fn no_import_cycles_between_top_level_modules() {
    use std::collections::{BTreeMap, BTreeSet};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let tops: BTreeSet<String> = files
        .iter()
        .map(|f| top_module(&src, f))
        .filter(|t| t != "lib" && t != "main")
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let from = top_module(&src, f);
        if !tops.contains(&from) {
            continue;
        }
        let code = code_of(f);
        // `crate::x` and the names inside `use crate::{x, y::z}`.
        let mut named = Vec::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                named.extend(
                    group
                        .split(',')
                        .map(|p| p.trim().split("::").next().unwrap_or("")),
                );
            } else {
                let end = rest
                    .find(|c: char| !c.is_alphanumeric() && c != '_')
                    .unwrap_or(rest.len());
                named.push(&rest[..end]);
            }
        }
        for to in named {
            if to != from && tops.contains(to) {
                edges.entry(from.clone()).or_default().insert(to.to_owned());
            }
        }
    }
    // A depth-first walk; a module met again while still on the path closes a cycle.
    fn walk(
        at: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == at) {
            let mut cycle = path[i..].to_vec();
            cycle.push(at.to_owned());
            return Some(cycle);
        }
        if done.contains(at) {
            return None;
        }
        path.push(at.to_owned());
        for next in edges.get(at).into_iter().flatten() {
            if let Some(cycle) = walk(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(at.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for top in &tops {
        let cycle = walk(top, &edges, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "an import cycle between top-level modules: {}",
            cycle.unwrap().join(" -> ")
        );
    }
    // The check sees real edges (it would pass vacuously on a broken parser).
    assert!(edges["web"].contains("fleet") && edges["fleet"].contains("db"));
}
