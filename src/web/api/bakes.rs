//! `/api/v1/recipes` and `/api/v1/bakes`, as JSON.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::auth::Principal;
use crate::bakes::{Cancelled, RecipeInput, StartedBy};
use crate::db::bakes::{BakeRow, StepRow};
use crate::web::AppState;
use crate::web::error::AppError;

/// A body of `what` (a JSON object), read strictly (see `web::json`).
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, AppError> {
    crate::web::json::parse(body, crate::web::json::Unknown::Refuse).map_err(|e| match e {
        AppError::BadRequest(m) => AppError::BadRequest(format!("{m} (The body is {what}.)")),
        other => other,
    })
}

pub async fn list_recipes(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok().json(crate::db::bakes::recipes(&state.pool).await?))
}

/// `POST /api/v1/recipes` -> 201 with the recipe.
pub async fn create_recipe(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let input: RecipeInput = json_body(
        &body,
        "a JSON object with name, base_image_id, setup_script (or git_url and setup_path) and test_command",
    )?;
    let ip = crate::web::pages::source_ip(&req);
    let recipe =
        crate::bakes::create_recipe(&state.pool, &state.settings, &principal, ip, &input).await?;
    Ok(HttpResponse::Created().json(recipe))
}

/// `POST /api/v1/recipes/{id}` (the whole recipe, as for a new one) -> 200 with the recipe.
pub async fn update_recipe(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let id: i64 = id
        .parse()
        .map_err(|_| AppError::NotFound(format!("There is no recipe {id}.")))?;
    let input: RecipeInput = json_body(
        &body,
        "a JSON object with name, base_image_id, setup_script (or git_url and setup_path) and test_command",
    )?;
    let ip = crate::web::pages::source_ip(&req);
    let recipe =
        crate::bakes::update_recipe(&state.pool, &state.settings, &principal, ip, id, &input)
            .await?;
    Ok(HttpResponse::Ok().json(recipe))
}

#[derive(serde::Serialize)]
pub struct BakeJson {
    #[serde(flatten)]
    bake: BakeRow,
    steps: Vec<StepRow>,
}

async fn bake_json(state: &AppState, bake: BakeRow) -> Result<BakeJson, AppError> {
    let steps = crate::db::bakes::steps(&state.pool, bake.id).await?;
    Ok(BakeJson { bake, steps })
}

#[derive(serde::Deserialize)]
struct StartBody {
    recipe_id: i64,
    #[serde(default)]
    source_revision: Option<String>,
}

/// `POST /api/v1/bakes` `{"recipe_id"}` -> 202 with the bake.
pub async fn start(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let input: StartBody = json_body(&body, "a JSON object with recipe_id")?;
    let revision = input.source_revision.unwrap_or_default();
    if revision.len() > 200 || revision.chars().any(char::is_control) {
        return Err(AppError::BadRequest(
            "source_revision is a commit id or ref of at most 200 characters.".into(),
        ));
    }
    let (bake, _) = crate::bakes::start(
        &state.pool,
        &state.settings,
        StartedBy::User {
            principal: &principal,
            ip: crate::web::pages::source_ip(&req),
            via_api: true,
        },
        input.recipe_id,
        revision.trim(),
    )
    .await?;
    Ok(HttpResponse::Accepted().json(bake_json(&state, bake).await?))
}

fn bake_id(raw: &str) -> Result<i64, AppError> {
    raw.parse()
        .map_err(|_| AppError::NotFound(format!("There is no bake {raw}.")))
}

pub async fn show(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = bake_id(&id)?;
    let bake = crate::bakes::found(&state.pool, id).await?;
    Ok(HttpResponse::Ok().json(bake_json(&state, bake).await?))
}

pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok().json(crate::db::bakes::list(&state.pool, 500).await?))
}

/// `POST /api/v1/bakes/{id}/cancel` -> 200 with the bake (also when it had already ended).
pub async fn cancel(
    req: HttpRequest,
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _body: crate::web::json::NoBody,
) -> Result<HttpResponse, AppError> {
    let id = bake_id(&id)?;
    let ip = crate::web::pages::source_ip(&req);
    let (bake, _): (BakeRow, Cancelled) =
        crate::bakes::cancel(&state.pool, &principal, ip, id).await?;
    Ok(HttpResponse::Ok().json(bake_json(&state, bake).await?))
}
