//! What docs/deploying.md promises, checked: the IAM policy it quotes is the one the code
//! makes, every EC2 action the console calls against moto is in it, and an image of another
//! architecture than the console's is refused before anything is launched.

use serde_json::{Value, json};

use crate::moto::moto_port;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
/// x86_64 and arm64 AMIs among those moto knows.
const X86_AMI: &str = "ami-1e749f67";
const ARM_AMI: &str = "ami-0e9271c829888680e";

#[test]
fn the_deployment_guide_quotes_the_policy_the_code_makes() {
    let out = std::process::Command::new(KILN)
        .arg("iam-policy")
        .output()
        .unwrap();
    assert!(out.status.success());
    let policy = String::from_utf8(out.stdout).unwrap();
    let guide =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deploying.md")).unwrap();
    assert!(
        guide.contains(&format!("```json\n{}```", policy)),
        "docs/deploying.md must quote `kiln iam-policy` as it prints today:\n{policy}"
    );
}

#[tokio::test]
async fn an_image_of_another_architecture_is_refused_and_every_ec2_call_is_in_the_policy() {
    let db = crate::helpers::fresh_database_url();
    let endpoint = format!("http://127.0.0.1:{}", moto_port());
    let fleet = format!("arch-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut console = crate::cli::serve_aws(&db, &endpoint, &fleet, &[("KILN_TASK_POLL", "1")]);
    let port = crate::cli::listening_port(&mut console).await;
    let base = format!("http://127.0.0.1:{port}");
    let token = crate::cli::admin_token(&db).await;
    let pool = kiln::db::connect(&db).await.unwrap();
    let api = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        api.post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };

    crate::cli::adopt_ami(&base, &token, &pool, X86_AMI).await;
    crate::cli::adopt_ami(&base, &token, &pool, ARM_AMI).await;
    let images: Value = api
        .get(format!("{base}/api/v1/images"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let arch_of = |id: &str| {
        images
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .map(|i| i["architecture"].clone())
    };
    assert_eq!(arch_of(X86_AMI), Some(json!("x86_64")), "{images}");
    assert_eq!(arch_of(ARM_AMI), Some(json!("arm64")), "{images}");

    // This suite's console is x86_64 (the agent binary it hands out is itself).
    assert_eq!(kiln::cloud::AGENT_ARCHITECTURE, "x86_64");
    let res = post(
        "/api/v1/servers",
        json!({"image_id": ARM_AMI, "count": 1, "instance_type": "t3.micro"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 409);
    let said: Value = res.json().await.unwrap();
    assert_eq!(
        said["error"],
        format!(
            "Image {ARM_AMI} is built for arm64, and the agent this console gives its servers \
             is its own x86_64 binary: servers of that image could not run it. Use an x86_64 \
             image, or run Kiln built for arm64 (docs/deploying.md)."
        )
    );
    let res = post(&format!("/api/v1/images/{ARM_AMI}/release"), json!({}))
        .await
        .unwrap();
    assert_eq!(res.status(), 409, "a release of it is refused too");
    let launches: i64 = sqlx::query_scalar("SELECT count(*) FROM launches")
        .fetch_one(&pool)
        .await
        .unwrap();
    let rollouts: i64 = sqlx::query_scalar("SELECT count(*) FROM rollouts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((launches, rollouts), (0, 0), "nothing was started");

    // The x86_64 image launches; then every action the console called is in the policy.
    let res = post(
        "/api/v1/servers",
        json!({"image_id": X86_AMI, "count": 2, "instance_type": "t3.micro"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    let ids: Vec<String> = crate::helpers::eventually(60, "two servers launched", || async {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM servers ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        (ids.len() == 2).then_some(ids)
    })
    .await;
    let res = post(
        &format!("/api/v1/servers/{}/terminate", ids[0]),
        json!({"force": true}),
    )
    .await
    .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    crate::helpers::eventually(60, "the server is terminated", || async {
        let state: String = sqlx::query_scalar("SELECT state FROM servers WHERE id = $1")
            .bind(&ids[0])
            .fetch_one(&pool)
            .await
            .unwrap();
        (state == "terminated").then_some(())
    })
    .await;
    let calls = crate::cli::ec2_calls(&base).await;
    for action in [
        "DescribeInstances",
        "DescribeImages",
        "RunInstances",
        "TerminateInstances",
    ] {
        assert!(calls.contains_key(action), "{action} was called: {calls:?}");
    }
    for action in calls.keys() {
        assert!(
            kiln::cloud::aws::policy::EC2_ACTIONS.contains(&action.as_str()),
            "the console called {action}, which `kiln iam-policy` does not allow"
        );
    }
    assert!(crate::cli::sigterm_and_wait(&mut console).await.success());
}
