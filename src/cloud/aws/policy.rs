//! The IAM permissions the aws provider needs: exactly the EC2 actions it calls, in one list.
//! `kiln iam-policy` prints the policy made from it, docs/deploying.md quotes that output (a
//! test compares them), `kiln doctor` checks what it can of it, and a test here fails when
//! the provider's code calls an action the list does not name, or names one it never calls.

/// Every EC2 action the provider calls, as IAM names them (without the `ec2:` prefix).
/// Tagging at launch and at image creation (TagSpecifications) needs `CreateTags` too.
pub const EC2_ACTIONS: &[&str] = &[
    "CreateImage",
    "CreateTags",
    "DeregisterImage",
    "DescribeImages",
    "DescribeInstances",
    "RunInstances",
    "TerminateInstances",
];

/// The policy document, in the order AWS's examples use: one statement allowing
/// [`EC2_ACTIONS`] on every resource.
pub fn document() -> String {
    let actions: Vec<String> = EC2_ACTIONS
        .iter()
        .map(|a| format!("        \"ec2:{a}\""))
        .collect();
    format!(
        "{{\n  \"Version\": \"2012-10-17\",\n  \"Statement\": [\n    {{\n      \"Sid\": \"KilnFleet\",\n      \"Effect\": \"Allow\",\n      \"Action\": [\n{}\n      ],\n      \"Resource\": \"*\"\n    }}\n  ]\n}}",
        actions.join(",\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The provider's source: every file of the module that may hold a call.
    const SOURCES: &[(&str, &str)] = &[
        ("mod.rs", include_str!("mod.rs")),
        ("calls.rs", include_str!("calls.rs")),
        ("errors.rs", include_str!("errors.rs")),
        ("pacing.rs", include_str!("pacing.rs")),
    ];

    /// `describe_instances` → `DescribeInstances`.
    fn action_of(operation: &str) -> String {
        operation
            .split('_')
            .map(|word| {
                let mut chars = word.chars();
                chars
                    .next()
                    .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The operations called on the SDK's client: `client` `.` `operation` `(`, whitespace
    /// and line breaks allowed between them (rustfmt splits long chains).
    fn called_operations(source: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut rest = source;
        while let Some(at) = rest.find("client") {
            rest = &rest[at + "client".len()..];
            let after = rest.trim_start();
            let Some(after) = after.strip_prefix('.') else {
                continue;
            };
            let after = after.trim_start();
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && after[name.len()..].trim_start().starts_with('(') {
                found.push(name);
            }
        }
        found
    }

    #[test]
    fn the_policy_lists_exactly_the_actions_the_provider_calls() {
        let mut called: Vec<String> = SOURCES
            .iter()
            .flat_map(|(_, source)| called_operations(source))
            .map(|op| action_of(&op))
            .collect();
        called.sort();
        called.dedup();
        assert!(
            called.len() >= 5,
            "the scan finds the provider's calls: {called:?}"
        );
        for action in &called {
            assert!(
                EC2_ACTIONS.contains(&action.as_str()),
                "the aws provider calls {action}, which the IAM policy (cloud::aws::policy::EC2_ACTIONS) does not list"
            );
        }
        for action in EC2_ACTIONS {
            assert!(
                called.iter().any(|c| c == action),
                "the IAM policy lists {action}, which the aws provider never calls: drop it"
            );
        }
    }

    #[test]
    fn the_scan_sees_calls_split_across_lines() {
        let source = "self\n    .client\n    .terminate_instances()\n    .send(); self.client.describe_images().x(); let client = 1; client_token(t)";
        assert_eq!(
            called_operations(source),
            ["terminate_instances", "describe_images"]
        );
        assert_eq!(action_of("run_instances"), "RunInstances");
    }

    #[test]
    fn the_document_allows_each_action_with_its_prefix() {
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
        let actions = doc["Statement"][0]["Action"].as_array().unwrap();
        assert_eq!(actions.len(), EC2_ACTIONS.len());
        assert_eq!(actions[0], "ec2:CreateImage");
        assert_eq!(doc["Statement"][0]["Effect"], "Allow");
    }
}
