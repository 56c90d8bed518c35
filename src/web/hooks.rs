//! `POST /hooks/github`: a push to the configured branch bakes the configured recipe at the
//! pushed commit. The delivery must carry a valid `X-Hub-Signature-256` (HMAC-SHA256 of the
//! body with `KILN_WEBHOOK_SECRET`); a redelivery (same `X-GitHub-Delivery`) answers with the
//! bake it started the first time.

use actix_web::{HttpRequest, HttpResponse, web};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::bakes::StartedBy;
use crate::web::AppState;
use crate::web::error::AppError;

/// GitHub caps a delivery's payload at 25 MB; a push of many commits is well over actix's
/// default 256 KiB.
const MAX_BODY: usize = 25 << 20;

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`; the
/// comparison takes the same time wherever the first difference is.
pub fn signature_ok(secret: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

pub async fn github(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, AppError> {
    let body = super::body::read_limited(payload, MAX_BODY, || {
        format!("A delivery has at most {} MiB.", MAX_BODY >> 20)
    })
    .await?;
    let settings = &state.settings;
    let refused = |why: &str| HttpResponse::Unauthorized().json(json!({ "error": why }));
    let Some(secret) = settings.webhook_secret.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(refused(
            "This Kiln has no webhook secret (KILN_WEBHOOK_SECRET); it accepts no delivery.",
        ));
    };
    let signature = header(&req, "x-hub-signature-256").unwrap_or_default();
    if !signature_ok(secret, &body, signature) {
        return Ok(refused(
            "The X-Hub-Signature-256 signature is missing or does not match the body.",
        ));
    }
    let event = header(&req, "x-github-event").unwrap_or_default();
    if event == "ping" {
        return Ok(HttpResponse::Ok().json(json!({"ok": "pong"})));
    }
    if event != "push" {
        return Ok(HttpResponse::Accepted()
            .json(json!({"ignored": format!("{event:?} events start no bake; only pushes do")})));
    }
    let delivery = header(&req, "x-github-delivery")
        .map(str::trim)
        .filter(|d| !d.is_empty() && d.len() <= 100)
        .ok_or_else(|| AppError::BadRequest("A delivery needs its X-GitHub-Delivery id.".into()))?;
    let push: Value = serde_json::from_slice(&body)
        .map_err(|e| AppError::BadRequest(format!("The push is not valid JSON: {e}")))?;
    let git_ref = push["ref"].as_str().unwrap_or_default();
    let wanted = format!("refs/heads/{}", settings.webhook_branch);
    if git_ref != wanted {
        return Ok(HttpResponse::Accepted().json(json!({
            "ignored": format!("a push to {git_ref}, not to {wanted}")
        })));
    }
    let after = push["after"].as_str().unwrap_or_default();
    if push["deleted"].as_bool() == Some(true) || after.chars().all(|c| c == '0') {
        return Ok(HttpResponse::Accepted()
            .json(json!({"ignored": "the branch was deleted; there is nothing to bake"})));
    }
    if after.len() > 64 || !after.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(AppError::BadRequest(format!(
            "The push's \"after\" {after:?} is not a commit id."
        )));
    }
    let recipe_name = settings.webhook_recipe.as_deref().unwrap_or_default();
    let recipe = crate::db::bakes::recipe_by_name(&state.pool, recipe_name)
        .await?
        .ok_or_else(|| {
            AppError::Conflict(format!(
                "KILN_WEBHOOK_RECIPE names no recipe ({recipe_name:?}); nothing was baked."
            ))
        })?;
    let (bake, created) = crate::bakes::start(
        &state.pool,
        settings,
        StartedBy::Webhook {
            delivery_id: delivery,
        },
        recipe.id,
        after,
    )
    .await?;
    let mut res = if created {
        HttpResponse::Accepted()
    } else {
        HttpResponse::Ok()
    };
    Ok(res.json(json!({
        "id": bake.id, "state": bake.state, "recipe_id": bake.recipe_id,
        "image_id": bake.image_id, "version": bake.version, "source_revision": bake.source_revision,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_github_s_hmac_sha256() {
        // GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!".
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_ok(
            "It's a Secret to Everybody",
            b"Hello, World!",
            sig
        ));
        assert!(!signature_ok(
            "It's a Secret to Everybody",
            b"Hello, World?",
            sig
        ));
        assert!(!signature_ok("another", b"Hello, World!", sig));
        assert!(!signature_ok(
            "It's a Secret to Everybody",
            b"Hello, World!",
            "sha1=abc"
        ));
        assert!(!signature_ok(
            "It's a Secret to Everybody",
            b"Hello, World!",
            ""
        ));
    }
}
