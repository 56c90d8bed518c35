//! The two big pages' reads, started while the session is still being loaded.
//!
//! Every console request first loads its session (one statement: the session, its user),
//! and only then does the handler run its own statements: two database round trips one
//! after the other. On the Servers and Images pages the handler's reads depend on nothing
//! but the address, so this middleware, placed outside the session middleware, starts them
//! at once for a GET that carries a validly signed session cookie; they run on their own
//! pooled connections while the session loads, and the handler picks the result up
//! ([`read`]) instead of reading again. The session's round trip costs 0.15–0.2 ms here
//! (`/healthz` with a session cookie 0.23–0.26 ms, without one 0.05–0.08 ms, Unix socket).
//! Measured with `ab` on 5,000 servers and 1,000 images, the binaries before and after
//! serving side by side and taking turns, mean per request over the Unix socket: Servers
//! 0.84–1.05 -> 0.71–0.93 ms, Images 2.84–3.28 -> 2.71–3.02 ms. Over TCP with TLS to the
//! same local server no difference showed (two cores busy with three connections' crypto at
//! once). Across a real network the round trip saved is the network's.
//!
//! The Servers page goes one step further: its context statement (counts, launches, launch
//! choices) also reads the session, with the very statement the session store would run
//! (`db::sessions::read_sql`), and hands the row to the store through a task-local
//! ([`crate::web::session_store::with_prefetched`], for this request only, and only for the
//! session key this request's cookie carries); the store takes it instead of reading. One
//! round trip fewer per view: sending a statement wakes a PostgreSQL backend, and on this
//! machine the three sends were 13–19% of the page's CPU in profiles. Measured with `ab`,
//! side by side, with the page's other changes of the same day (the kept launch choices,
//! `db::servers::ChoicesCache`; rows borrowed from the rows as sent): 1.10–1.16 -> 0.78–0.88
//! ms per view.
//!
//! Nothing is decided early: the access check still runs on the loaded session, and when it
//! refuses, the request is dropped with the prefetched reads (aborted if still running), so
//! what was read is never shown. Only reads are started here, never writes (a session's idle
//! expiry, when due, is pushed forward by the store, as without a prefetch).

use std::future::Future;

use actix_web::body::MessageBody;
use actix_web::cookie::{CookieJar, Key};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpRequest, web};

use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::session_store::{PrefetchedSession, with_prefetched};

/// The name of the console's session cookie.
pub const SESSION_COOKIE: &str = "kiln_session";

/// Reads running for this request, yielding a `T`. Dropped unread (the request was refused,
/// or failed), the reads are aborted.
struct Prefetched<T: Send + 'static>(tokio::task::JoinHandle<Result<T, AppError>>);

impl<T: Send + 'static> Drop for Prefetched<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts `reads` for this request now, on the current worker's runtime, in the request's
/// span (its log lines keep the request id); the handler gets the result from [`read`].
pub fn spawn<T, F>(req: &ServiceRequest, reads: F)
where
    T: Send + 'static,
    F: Future<Output = Result<T, AppError>> + Send + 'static,
{
    use tracing::Instrument;
    req.extensions_mut()
        .insert(Prefetched(tokio::spawn(reads.in_current_span())));
}

/// The result of the reads [`spawn`]ed for this request, or of `reads` when none were (the
/// request carried no session cookie, or did not ask for the page this way).
pub async fn read<T, F>(req: &HttpRequest, reads: F) -> Result<T, AppError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, AppError>>,
{
    let started = req.extensions_mut().remove::<Prefetched<T>>();
    let Some(mut started) = started else {
        return reads.await;
    };
    (&mut started.0).await.unwrap_or_else(|e| {
        Err(AppError::Internal(
            anyhow::Error::new(e).context("A page's reads failed"),
        ))
    })
}

/// A page that can start its reads from the request alone (it starts nothing when it
/// cannot, say the address does not parse: the handler then reads, and answers, as usual).
/// Given the session key (the cookie's, its signature checked), it may read the session too,
/// in one of its own statements, and return that read for the session store.
type Starter = fn(&ServiceRequest, web::Data<AppState>, &str) -> Option<PrefetchedSession>;

fn starter(path: &str) -> Option<Starter> {
    match path {
        "/servers" => Some(crate::web::pages::servers::prefetch),
        "/images" => Some(crate::web::pages::images::prefetch),
        _ => None,
    }
}

/// The session key the request's cookie carries, when the cookie is signed with our key: a
/// forged or garbled cookie starts nothing (the session middleware would not load it either).
fn signed_session(req: &ServiceRequest, key: &Key) -> Option<String> {
    let cookie = req.cookie(SESSION_COOKIE)?;
    let mut jar = CookieJar::new();
    jar.add_original(cookie);
    Some(jar.signed(key).get(SESSION_COOKIE)?.value().to_owned())
}

pub async fn start(
    key: Key,
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    if req.method() == actix_web::http::Method::GET
        && let Some(start) = starter(req.path())
        && let Some(session) = signed_session(&req, &key)
        && let Some(state) = req.app_data::<web::Data<AppState>>().cloned()
        && let Some(session) = start(&req, state, &session)
    {
        return with_prefetched(session, next.call(req)).await;
    }
    next.call(req).await
}
