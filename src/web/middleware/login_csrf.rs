//! The login form's CSRF token, kept in a signed cookie instead of a session row (a signed
//! double-submit token): a visitor who has not logged in writes nothing to the database, so
//! anonymous requests cannot fill the sessions table. The form carries the token; the cookie,
//! signed with the console's key (so another site cannot plant one), carries it too; a POST
//! without a session is accepted only when the two are equal (`access::check_csrf`). Once
//! logged in, the session row holds the CSRF token, as before.

use actix_web::body::MessageBody;
use actix_web::cookie::{Cookie, CookieJar, Key, SameSite};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};

/// The cookie's name.
pub const COOKIE: &str = "kiln_csrf";

/// This request's signed cookie, verified: the token a session-less form must carry.
#[derive(Clone)]
pub struct Presented(pub String);

/// A token made for this request's page (it had no valid cookie): set as the cookie on its
/// response.
#[derive(Clone)]
pub struct Issued(pub String);

pub async fn handle(
    key: Key,
    secure: bool,
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    if let Some(cookie) = req.cookie(COOKIE) {
        let mut jar = CookieJar::new();
        jar.add_original(cookie);
        if let Some(verified) = jar.signed(&key).get(COOKIE) {
            req.extensions_mut()
                .insert(Presented(verified.value().to_owned()));
        }
    }
    let mut res = next.call(req).await?;
    let issued = res.request().extensions().get::<Issued>().cloned();
    if let Some(Issued(token)) = issued {
        let mut jar = CookieJar::new();
        jar.signed_mut(&key).add(
            Cookie::build(COOKIE, token)
                .path("/")
                .http_only(true)
                .secure(secure)
                .same_site(SameSite::Strict)
                .finish(),
        );
        for cookie in jar.delta() {
            res.response_mut().add_cookie(cookie)?;
        }
    }
    Ok(res)
}
