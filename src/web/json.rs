//! Request bodies in JSON, read strictly: types as declared (a boolean is `true` or `false`,
//! never `"yes"`; a count is an integer, never `"3"`), required fields required, and every
//! refusal a 400 whose sentence names the field (`count: invalid type: string "3", expected
//! u32`). On Kiln's own API (`/api/v1`) an unknown field is refused too — a typo must not
//! silently do something else; Librato's routes (`/v1`) ignore fields Librato's clients send
//! that Kiln does not use ([`Unknown::Ignore`]).
//!
//! Forms keep their own parsing: in a form every value is a string.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use super::error::AppError;

/// What to do with a field the body's type does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    Refuse,
    Ignore,
}

/// Parses `body` as a `T`, or says in one sentence what is wrong and where.
pub fn parse<T: DeserializeOwned>(body: &[u8], unknown: Unknown) -> Result<T, AppError> {
    // serde would take a struct from an array of its fields in order: a body is an object.
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(AppError::BadRequest(
                "The body is empty; send a JSON object.".into(),
            ));
        }
        Some(b'{') => {}
        Some(_) if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() => {
            return Err(AppError::BadRequest(
                "The body is not valid JSON; send a JSON object.".into(),
            ));
        }
        Some(_) => {
            return Err(AppError::BadRequest(
                "The body is not valid: it must be a JSON object.".into(),
            ));
        }
    }
    let mut ignored = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let mut json = serde_json::Deserializer::from_slice(body);
    let parsed: Result<T, _> = serde_ignored::deserialize(
        serde_path_to_error::Deserializer::new(&mut json, &mut track),
        |path| ignored.push(path.to_string()),
    );
    let value = match parsed.and_then(|v| json.end().map(|()| v)) {
        Ok(value) => value,
        Err(e) => {
            let path = track.path().to_string();
            let what = plain_words(&e.to_string());
            return Err(AppError::BadRequest(
                if matches!(path.as_str(), "." | "?" | "") {
                    format!("The body is not valid: {what}.")
                } else {
                    format!("{path}: {what}.")
                },
            ));
        }
    };
    if unknown == Unknown::Refuse
        && let Some(field) = ignored.first()
    {
        return Err(AppError::BadRequest(format!(
            "{field}: unknown field; check its spelling (this API refuses fields it does not know)."
        )));
    }
    Ok(value)
}

/// serde's names of Rust types in the words of the API's users.
fn plain_words(message: &str) -> String {
    let mut out = message.to_owned();
    for (rust, plain) in [
        ("expected u8", "expected a whole number, 0 or more"),
        ("expected u16", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
    ] {
        out = out.replace(rust, plain);
    }
    // "expected struct Launch": the type's name means nothing to the sender.
    if let Some(at) = out.find("expected struct ") {
        let rest = &out[at + "expected struct ".len()..];
        let name_end = rest
            .find(|c: char| !c.is_alphanumeric() && c != '_')
            .unwrap_or(rest.len());
        out = format!("{}expected a JSON object{}", &out[..at], &rest[name_end..]);
    }
    out
}

/// The whole body, within actix's payload limit (256 KiB): over it a 413, otherwise a 400 when
/// it cannot be read.
fn read_body(
    req: &HttpRequest,
    payload: &mut Payload,
) -> impl std::future::Future<Output = Result<web::Bytes, AppError>> + 'static {
    let body = web::Bytes::from_request(req, payload);
    async move {
        body.await.map_err(|e| {
            let status = e.as_response_error().status_code();
            if status == actix_web::http::StatusCode::PAYLOAD_TOO_LARGE {
                AppError::TooLarge(format!("The body is too large: {e}"))
            } else {
                AppError::BadRequest(format!("The body could not be read: {e}"))
            }
        })
    }
}

/// An extractor: the body, parsed strictly as a `T` (unknown fields refused). The request
/// must say it is JSON.
pub struct Strict<T>(pub T);

impl<T> std::ops::Deref for Strict<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Strict<T> {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let is_json = req
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim_start().starts_with("application/json"));
        let body = read_body(req, payload);
        Box::pin(async move {
            let body = body.await?;
            if !is_json {
                return Err(AppError::BadRequest(
                    "Send the body as JSON (Content-Type: application/json).".into(),
                ));
            }
            parse(&body, Unknown::Refuse).map(Strict)
        })
    }
}

/// The body of an action that takes none (cancel, retry, deregister, pause…): nothing, or
/// `{}`. Anything else is refused as the API refuses an unknown field — a body sent to such a
/// route was meant to say something the route would silently ignore.
pub struct NoBody;

#[derive(Debug, Default, serde::Deserialize)]
struct Empty {}

impl FromRequest for NoBody {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read_body(req, payload);
        Box::pin(async move {
            let body = body.await?;
            parse_optional::<Empty>(&body)
                .map(|_| NoBody)
                .map_err(|e| match e {
                    AppError::BadRequest(m) => {
                        AppError::BadRequest(format!("{m} (This action takes no body.)"))
                    }
                    other => other,
                })
        })
    }
}

/// An optional body: none (or only whitespace) is `T::default()`; anything else must be a `T`.
pub fn parse_optional<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, AppError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse(body, Unknown::Refuse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Launch {
        #[allow(dead_code)]
        image_id: String,
        count: u32,
        #[serde(default)]
        force: bool,
    }

    fn message<T: DeserializeOwned + std::fmt::Debug>(body: &str, unknown: Unknown) -> String {
        match parse::<T>(body.as_bytes(), unknown) {
            Err(AppError::BadRequest(m)) => m,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn refusals_name_the_field() {
        let r = Unknown::Refuse;
        assert!(message::<Launch>(r#"{"image_id": "a", "count": "3"}"#, r).starts_with("count: "));
        assert!(
            message::<Launch>(r#"{"image_id": "a", "count": 1, "force": "yes please"}"#, r)
                .starts_with("force: ")
        );
        assert!(message::<Launch>(r#"{"image_id": "a"}"#, r).contains("missing field `count`"));
        assert!(message::<Launch>(r#"{"image_id": "a", "count": null}"#, r).starts_with("count: "));
        assert!(message::<Launch>(r#"{"image_id": "a", "count": -1}"#, r).starts_with("count: "));
        assert!(
            message::<Launch>(r#"{"image_id": "a", "count": 1, "forse": true}"#, r)
                .starts_with("forse: unknown field")
        );
        assert!(message::<Launch>(r#"{"image_id": "a", "count": 1} x"#, r).contains("trailing"));
        assert!(message::<Launch>("", r).contains("empty"));
        let not_object = message::<Launch>("[]", r);
        assert!(not_object.contains("must be a JSON object"), "{not_object}");
        assert!(message::<Launch>("nope", r).contains("not valid JSON"));
        assert!(
            message::<Launch>(r#"{"image_id": "a", "count": "3"}"#, r).contains("whole number")
        );
    }

    #[test]
    fn an_action_without_a_body_takes_nothing_or_an_empty_object() {
        assert!(parse_optional::<Empty>(b"").is_ok());
        assert!(parse_optional::<Empty>(b" {} ").is_ok());
        let refused = |body: &str| match parse_optional::<Empty>(body.as_bytes()) {
            Err(AppError::BadRequest(m)) => m,
            other => panic!("{body}: {other:?}"),
        };
        assert!(refused(r#"{"force": true}"#).starts_with("force: unknown field"));
        assert!(refused("[]").contains("must be a JSON object"));
    }

    #[test]
    fn librato_fields_kiln_does_not_use_are_ignored_where_asked() {
        let ok: Launch = parse(
            br#"{"image_id": "a", "count": 1, "period": 60}"#,
            Unknown::Ignore,
        )
        .unwrap();
        assert_eq!(ok.count, 1);
        assert!(!ok.force);
    }
}
