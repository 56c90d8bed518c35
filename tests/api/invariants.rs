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
            assert!(
                !text.contains("<script>") && !text.contains("<style"),
                "{}: inline script or style",
                path.display()
            );
            assert!(
                !text.contains(" style=") && !text.contains(" onclick="),
                "{}: inline style or handler",
                path.display()
            );
        }
    }
}
