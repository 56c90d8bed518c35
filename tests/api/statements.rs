//! No database work starts for a request before its session is loaded and its access decided:
//! the statements each request runs, counted inside the app. sqlx reports every statement as
//! a tracing event (target `sqlx::query`) in the span of the request that ran it, and every
//! request's span carries the id the response returns in `X-Request-Id`; a tracing layer
//! installed by this test records statements by that id, so requests of other tests running
//! at the same time (and the console's background loops) never mix in.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use crate::helpers::{client, spawn_app};

/// Statements seen per request id.
static SEEN: OnceLock<Mutex<HashMap<String, Vec<String>>>> = OnceLock::new();

fn seen() -> &'static Mutex<HashMap<String, Vec<String>>> {
    SEEN.get_or_init(Default::default)
}

/// A request span's id, kept with the span.
struct RequestId(String);

#[derive(Default)]
struct Fields {
    request_id: Option<String>,
    text: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "request_id" {
            self.request_id = Some(value.to_owned());
        }
        self.text.push_str(value);
        self.text.push(' ');
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let value = format!("{value:?}");
        if field.name() == "request_id" {
            self.request_id = Some(value.trim_matches('"').to_owned());
        }
        self.text.push_str(&value);
        self.text.push(' ');
    }
}

struct Statements;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Statements {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        if attrs.metadata().name() != "request" {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(request_id), Some(span)) = (fields.request_id, ctx.span(id)) {
            span.extensions_mut().insert(RequestId(request_id));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let request_id = scope
            .from_root()
            .find_map(|span| span.extensions().get::<RequestId>().map(|r| r.0.clone()));
        if let Some(request_id) = request_id {
            let mut fields = Fields::default();
            event.record(&mut fields);
            seen()
                .lock()
                .unwrap()
                .entry(request_id)
                .or_default()
                .push(fields.text);
        }
    }
}

/// Installs the layer as the process's subscriber, once (sqlx's statement events are at
/// `debug`; nothing else is recorded).
fn install() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = tracing_subscriber::filter::Targets::new()
            .with_target("sqlx::query", tracing::Level::DEBUG)
            .with_target("kiln", tracing::Level::INFO);
        let subscriber = tracing_subscriber::registry().with(Statements.with_filter(filter));
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other subscriber in the test process (unset KILN_TEST_LOG)");
    });
}

/// The statements the request that got `res` ran.
fn statements_of(res: &reqwest::Response) -> Vec<String> {
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    seen().lock().unwrap().remove(&id).unwrap_or_default()
}

/// Whether a statement names the `servers` or `images` table.
fn touches_the_fleet(statement: &str) -> bool {
    statement
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .any(|word| word.eq_ignore_ascii_case("servers") || word.eq_ignore_ascii_case("images"))
}

#[tokio::test]
async fn a_visitor_without_a_session_starts_no_read_of_the_fleet() {
    install();
    let app = spawn_app().await;
    // A visitor with the login page's cookie, and one with a session cookie of its own making.
    let visitor = client();
    assert_eq!(app.get(&visitor, "/login").await.status(), 200);
    let forged = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    for path in [
        "/servers",
        "/images",
        "/servers?live=true",
        "/images?rows=true",
    ] {
        for res in [
            app.get(&visitor, path).await,
            forged
                .get(app.url(path))
                .header("cookie", "kiln_session=forged-value")
                .send()
                .await
                .unwrap(),
        ] {
            assert_eq!(res.status(), 303, "{path}: to the login page");
            let statements = statements_of(&res);
            let fleet: Vec<&String> = statements.iter().filter(|s| touches_the_fleet(s)).collect();
            assert!(
                fleet.is_empty(),
                "GET {path} without a session read the fleet: {fleet:?}"
            );
        }
    }

    // The same pages with a session do read it: the count above is not blind.
    let admin = app.admin().await;
    for path in ["/servers", "/images"] {
        let res = app.get(&admin, path).await;
        assert_eq!(res.status(), 200);
        let statements = statements_of(&res);
        assert!(
            statements.iter().any(|s| touches_the_fleet(s)),
            "GET {path} with a session: {statements:?}"
        );
        // The session and its user are read once, in one statement, before anything else.
        assert!(
            statements[0].contains("sessions") && statements[0].contains("users"),
            "{statements:?}"
        );
    }
}
