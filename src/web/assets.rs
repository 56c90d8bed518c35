//! Static assets compiled into the binary (so it runs from any directory), served with a
//! content-hash ETag. Templates link them as `/static/NAME?v=HASH`; a request carrying the
//! current hash is cached for a year (the URL changes when the content does), any other for
//! five minutes, and both revalidate with If-None-Match -> 304.

use std::collections::HashMap;
use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use rust_embed::Embed;

#[derive(Embed)]
#[folder = "static/"]
struct Files;

/// Short content hashes by file name, computed once.
static HASHES: LazyLock<HashMap<String, String>> = LazyLock::new(|| {
    Files::iter()
        .filter_map(|name| {
            let file = Files::get(&name)?;
            Some((
                name.into_owned(),
                hex::encode(&file.metadata.sha256_hash()[..8]),
            ))
        })
        .collect()
});

/// The versioned URL of an asset. An unknown name is a bug in a template; it still gets a
/// URL (which will 404) rather than a panic.
pub fn url(name: &str) -> String {
    match HASHES.get(name) {
        Some(hash) => format!("/static/{name}?v={hash}"),
        None => format!("/static/{name}"),
    }
}

#[derive(serde::Deserialize)]
pub struct Version {
    v: Option<String>,
}

pub async fn serve(
    req: HttpRequest,
    path: web::Path<String>,
    version: web::Query<Version>,
) -> HttpResponse {
    let name = path.into_inner();
    let (Some(file), Some(hash)) = (Files::get(&name), HASHES.get(&name)) else {
        return HttpResponse::NotFound()
            .content_type("text/plain")
            .body("no such asset");
    };
    let etag = format!("\"{hash}\"");
    let cache = if version.v.as_deref() == Some(hash.as_str()) {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=300"
    };
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .insert_header((header::CACHE_CONTROL, cache))
            .finish();
    }
    let mime = mime_guess::from_path(&name).first_or_octet_stream();
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, mime.essence_str().to_owned()))
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, cache))
        .body(file.data.into_owned())
}
