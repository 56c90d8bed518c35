//! ONE contract test suite for the cloud providers (object_store style): every function in
//! `suite` states a promise of the `Provider` contract, and `contract_tests!` runs each of
//! them against the local provider and against the aws provider talking to moto.

use std::sync::Arc;

use kiln::cloud::{
    AgentBootstrap, ErrorKind, FLEET_TAG, ImageQuery, ImageState, LAUNCH_TOKEN_TAG, LaunchLimits,
    LaunchRequest, Provider, ServerFilter, ServerState, Tags, describe_all, validate_launch,
};
use kiln::telemetry::prometheus::Registry;

/// What the suite needs besides the provider.
pub struct Ctx {
    /// An available image to launch from.
    pub image_id: String,
    /// Well-formed, but no such image.
    pub unknown_image_id: String,
    pub limits: LaunchLimits,
    /// EC2 calls made so far (always 0 for the local provider).
    pub registry: Arc<Registry>,
}

impl Ctx {
    fn calls(&self) -> f64 {
        self.registry.counter(kiln::cloud::aws::CALLS, &[])
    }
}

pub fn token() -> String {
    format!("t-{}", uuid::Uuid::new_v4().simple())
}

pub fn request(ctx: &Ctx, count: u32, token: &str) -> LaunchRequest {
    LaunchRequest {
        image_id: ctx.image_id.clone(),
        count,
        instance_type: "t3.micro".into(),
        tags: Tags::from([("kiln:purpose".to_owned(), "worker".to_owned())]),
        bootstrap: AgentBootstrap {
            console_url: "http://127.0.0.1:9".into(),
            enrollment_token: "kiln_enroll_test".into(),
        },
        subnet_id: None,
        security_group_ids: vec![],
        key_name: None,
        iam_instance_profile: None,
        client_token: token.to_owned(),
    }
}

pub fn limits() -> LaunchLimits {
    LaunchLimits {
        max_servers: 50,
        instance_types: vec!["t3.micro".into(), "c5.large".into()],
    }
}

pub mod suite {
    use super::*;

    pub async fn launch_tags_and_describes<P: Provider>(p: &P, ctx: &Ctx) {
        let token = token();

        let outcome = p.launch(&request(ctx, 2, &token)).await.unwrap();

        assert_eq!(outcome.servers.len(), 2);
        assert!(!outcome.already_launched && outcome.shortfall.is_none());
        let all = describe_all(p, &ServerFilter::fleet(p.fleet()))
            .await
            .unwrap();
        assert_eq!(all.len(), 2);
        for server in &all {
            assert!(outcome.servers.iter().any(|s| s.id == server.id));
            assert_eq!(server.image_id, ctx.image_id);
            assert_eq!(
                server.tags.get(FLEET_TAG).map(String::as_str),
                Some(p.fleet())
            );
            assert_eq!(server.tags.get(LAUNCH_TOKEN_TAG), Some(&token));
            assert_eq!(
                server.tags.get("kiln:purpose").map(String::as_str),
                Some("worker")
            );
            assert!(
                matches!(server.state, ServerState::Pending | ServerState::Running),
                "{:?}",
                server.state
            );
            p.check_server_id(&server.id).unwrap();
        }
    }

    pub async fn a_retried_launch_never_launches_twice<P: Provider>(p: &P, ctx: &Ctx) {
        let token = token();
        let first = p.launch(&request(ctx, 2, &token)).await.unwrap();

        let again = p.launch(&request(ctx, 2, &token)).await.unwrap();

        assert!(again.already_launched);
        let mut a: Vec<_> = first.servers.iter().map(|s| s.id.clone()).collect();
        let mut b: Vec<_> = again.servers.iter().map(|s| s.id.clone()).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        assert_eq!(
            describe_all(p, &ServerFilter::fleet(p.fleet()))
                .await
                .unwrap()
                .len(),
            2
        );
    }

    pub async fn describe_pages_through_every_server<P: Provider>(p: &P, ctx: &Ctx) {
        for _ in 0..6 {
            p.launch(&request(ctx, 1, &token())).await.unwrap();
        }
        let filter = ServerFilter::fleet(p.fleet());

        let mut seen = Vec::new();
        let mut pages = 0;
        let mut next = None;
        loop {
            let page = p.describe_servers(&filter, next, 5).await.unwrap();
            pages += 1;
            seen.extend(page.items.into_iter().map(|s| s.id));
            match page.next {
                Some(t) => next = Some(t),
                None => break,
            }
        }

        assert_eq!(pages, 2, "6 servers in pages of 5");
        let unique: std::collections::BTreeSet<_> = seen.iter().collect();
        assert_eq!((seen.len(), unique.len()), (6, 6));
    }

    pub async fn describe_filters_by_id_and_state<P: Provider>(p: &P, ctx: &Ctx) {
        let launched = p.launch(&request(ctx, 3, &token())).await.unwrap().servers;
        let gone = launched[0].id.clone();
        p.terminate(std::slice::from_ref(&gone)).await.unwrap();

        let by_id = ServerFilter {
            ids: vec![launched[1].id.clone()],
            ..ServerFilter::fleet(p.fleet())
        };
        let live = ServerFilter {
            states: vec![ServerState::Pending, ServerState::Running],
            ..ServerFilter::fleet(p.fleet())
        };

        let one = describe_all(p, &by_id).await.unwrap();
        let running = describe_all(p, &live).await.unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].id, launched[1].id);
        assert_eq!(running.len(), 2);
        assert!(running.iter().all(|s| s.id != gone));
    }

    pub async fn terminate_many_at_once_and_again<P: Provider>(p: &P, ctx: &Ctx) {
        let ids: Vec<String> = p
            .launch(&request(ctx, 3, &token()))
            .await
            .unwrap()
            .servers
            .into_iter()
            .map(|s| s.id)
            .collect();

        p.terminate(&ids).await.unwrap();
        p.terminate(&ids).await.unwrap();

        let after = describe_all(
            p,
            &ServerFilter {
                ids: ids.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(after.len(), 3);
        assert!(
            after.iter().all(|s| s.state == ServerState::Terminated),
            "{after:?}"
        );
    }

    pub async fn tags_are_added_to_servers<P: Provider>(p: &P, ctx: &Ctx) {
        let id = p.launch(&request(ctx, 1, &token())).await.unwrap().servers[0]
            .id
            .clone();

        p.tag(
            std::slice::from_ref(&id),
            &Tags::from([("kiln:adopted".to_owned(), "yes".to_owned())]),
        )
        .await
        .unwrap();

        let server = describe_all(
            p,
            &ServerFilter {
                ids: vec![id],
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .remove(0);
        assert_eq!(
            server.tags.get("kiln:adopted").map(String::as_str),
            Some("yes")
        );
        assert_eq!(
            server.tags.get(FLEET_TAG).map(String::as_str),
            Some(p.fleet()),
            "other tags kept"
        );
    }

    pub async fn images_are_created_listed_and_deregistered<P: Provider>(p: &P, ctx: &Ctx) {
        let server = p.launch(&request(ctx, 1, &token())).await.unwrap().servers[0]
            .id
            .clone();
        let name = format!("kiln-test-{}", uuid::Uuid::new_v4().simple());
        let tags = Tags::from([("kiln:version".to_owned(), "7".to_owned())]);

        let id = p
            .create_image(&server, &name, "made by the contract suite", &tags)
            .await
            .unwrap();

        p.check_image_id(&id).unwrap();
        let image = p
            .get_image(&id)
            .await
            .unwrap()
            .expect("the new image is known");
        assert_eq!(image.name, name);
        assert!(matches!(
            image.state,
            ImageState::Pending | ImageState::Available
        ));
        assert_eq!(
            image.tags.get("kiln:version").map(String::as_str),
            Some("7")
        );
        assert_eq!(
            image.tags.get(FLEET_TAG).map(String::as_str),
            Some(p.fleet())
        );
        let query = ImageQuery {
            tags: vec![(FLEET_TAG.to_owned(), p.fleet().to_owned())],
            ..Default::default()
        };
        let listed = p.list_images(&query, None).await.unwrap();
        assert!(listed.items.iter().any(|i| i.id == id));

        p.deregister_image(&id).await.unwrap();

        let after = p.get_image(&id).await.unwrap();
        assert!(
            after
                .as_ref()
                .is_none_or(|i| i.state == ImageState::Deregistered),
            "{after:?}"
        );
        p.deregister_image(&id).await.unwrap();
    }

    /// The local provider records images under Kiln's id; EC2 refuses (AMIs are adopted by id).
    pub async fn register_image_records_or_refuses_plainly<P: Provider>(p: &P, _ctx: &Ctx) {
        let id = format!("ami-local-{}", kiln::cloud::local::random_hex(17));
        let tags = Tags::from([("kiln:version".to_owned(), "9".to_owned())]);

        let result = p
            .register_image(&id, "hand-made", "registered by the suite", &tags)
            .await;

        match p.name() {
            "local" => {
                result.unwrap();
                let image = p.get_image(&id).await.unwrap().unwrap();
                assert_eq!(
                    (image.name.as_str(), image.state),
                    ("hand-made", ImageState::Available)
                );
                assert_eq!(
                    image.tags.get(FLEET_TAG).map(String::as_str),
                    Some(p.fleet())
                );
                p.register_image(&id, "hand-made", "again", &tags)
                    .await
                    .unwrap();
            }
            _ => {
                let err = result.unwrap_err();
                assert_eq!(err.kind, ErrorKind::InvalidInput);
                assert!(err.message.contains("added by its AMI id"), "{err}");
            }
        }
    }

    pub async fn unknown_images_are_not_found<P: Provider>(p: &P, ctx: &Ctx) {
        assert!(p.get_image(&ctx.unknown_image_id).await.unwrap().is_none());
        let mut req = request(ctx, 1, &token());
        req.image_id = ctx.unknown_image_id.clone();

        let err = p.launch(&req).await.unwrap_err();

        assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
        assert!(
            err.message.contains(&ctx.unknown_image_id) || err.message.contains("NotFound"),
            "{err}"
        );
        assert!(
            describe_all(p, &ServerFilter::fleet(p.fleet()))
                .await
                .unwrap()
                .is_empty()
        );
    }

    pub async fn bad_input_is_refused_before_any_call<P: Provider>(p: &P, ctx: &Ctx) {
        let before = ctx.calls();
        let good = request(ctx, 1, &token());
        let cases: Vec<(LaunchRequest, &str)> = vec![
            (
                LaunchRequest {
                    count: 0,
                    ..good.clone()
                },
                "at least one",
            ),
            (
                LaunchRequest {
                    count: 10_000,
                    ..good.clone()
                },
                "KILN_MAX_SERVERS",
            ),
            (
                LaunchRequest {
                    instance_type: "m9.huge".into(),
                    ..good.clone()
                },
                "not an offered instance type",
            ),
            (
                LaunchRequest {
                    image_id: "not-an-image".into(),
                    ..good.clone()
                },
                "is not a",
            ),
            (
                LaunchRequest {
                    image_id: "ami-ZZZ".into(),
                    ..good.clone()
                },
                "is not a",
            ),
            (
                LaunchRequest {
                    client_token: "has spaces".into(),
                    ..good.clone()
                },
                "launch token",
            ),
        ];

        for (req, words) in cases {
            let err = validate_launch(p, &ctx.limits, &req).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidInput, "{err}");
            assert!(err.message.contains(words), "{err} should say {words:?}");
        }
        let malformed = p
            .launch(&LaunchRequest {
                image_id: "not-an-image".into(),
                ..good.clone()
            })
            .await
            .unwrap_err();
        assert_eq!(malformed.kind, ErrorKind::InvalidInput);
        assert_eq!(
            p.check_server_id("server-1").unwrap_err().kind,
            ErrorKind::InvalidInput
        );
        assert_eq!(
            p.terminate(&["server-1".to_owned()])
                .await
                .unwrap_err()
                .kind,
            ErrorKind::InvalidInput
        );
        assert_eq!(ctx.calls(), before, "no call reached the provider");
        validate_launch(p, &ctx.limits, &good).unwrap();
    }
}

macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod on_local {
            $(
                #[tokio::test]
                async fn $name() {
                    let h = crate::cloud_local::harness().await;
                    super::suite::$name(&h.provider, &h.ctx).await;
                    h.cleanup().await;
                }
            )*
        }
        mod on_aws_moto {
            $(
                #[tokio::test]
                async fn $name() {
                    let h = crate::cloud_aws::harness().await;
                    super::suite::$name(&h.provider, &h.ctx).await;
                }
            )*
        }
    };
}

contract_tests!(
    launch_tags_and_describes,
    a_retried_launch_never_launches_twice,
    describe_pages_through_every_server,
    describe_filters_by_id_and_state,
    terminate_many_at_once_and_again,
    tags_are_added_to_servers,
    images_are_created_listed_and_deregistered,
    unknown_images_are_not_found,
    register_image_records_or_refuses_plainly,
    bad_input_is_refused_before_any_call,
);
