//! Architecture invariants from ARCHITECTURE.md that a machine can check.

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
    let above = ["web", "startup.rs", "cli", "bench", "main.rs", "lib.rs"];
    let mut offenders = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        if above.contains(&top) {
            continue;
        }
        let code: String = std::fs::read_to_string(f)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        if code.contains("crate::web") || code.contains("super::web") {
            offenders.push(rel.display().to_string());
        }
    }
    assert!(
        offenders.is_empty(),
        "below the web, these import it: {offenders:?}"
    );
}
