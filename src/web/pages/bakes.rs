//! The Bakes page (bakes newest first, the recipes with a Bake button each, the new-recipe
//! form) and a bake's own page (its steps and the live log of its setup and tests; cancel).

use actix_session::Session;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

use super::{answer, is_htmx, see_other, source_ip};
use crate::auth::Principal;
use crate::bakes::{Cancelled, RecipeInput, StartedBy};
use crate::db::bakes::{BakeRow, RecipeRow, StepRow};
use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::layout::{Layout, flash};
use crate::web::view::{When, when, when_opt};

/// The bake page shows at most this many output chunks per job (the jobs' pages show all).
const LOG_CHUNKS: i64 = 2000;

pub struct BakeView {
    pub id: i64,
    pub recipe: String,
    pub version: i32,
    pub state: crate::domain::BakeState,
    pub step: crate::domain::BakeStep,
    pub failure: String,
    pub trigger: String,
    pub started_by: String,
    pub source_revision: String,
    pub builder_id: String,
    pub image_id: String,
    pub created: When,
    pub finished: Option<When>,
    pub running: bool,
}

impl From<BakeRow> for BakeView {
    fn from(b: BakeRow) -> Self {
        Self {
            id: b.id,
            running: b.state == crate::domain::BakeState::Running,
            recipe: b.recipe_name,
            version: b.version,
            state: b.state,
            step: b.step,
            failure: b.failure,
            trigger: b.trigger,
            started_by: b.started_by,
            source_revision: b.source_revision,
            builder_id: b.builder_id.unwrap_or_default(),
            image_id: b.image_id.unwrap_or_default(),
            created: when(b.created_at),
            finished: when_opt(b.finished_at),
        }
    }
}

#[derive(Template)]
#[template(path = "bakes.html")]
struct BakesPage {
    layout: Layout,
    bakes: Vec<BakeView>,
    recipes: Vec<RecipeRow>,
    images: Vec<(String, String, String)>,
    instance_types: Vec<String>,
    form: RecipeForm,
    error: Option<String>,
}

/// The new-recipe form as typed (shown again with the reason when refused).
#[derive(Default, serde::Deserialize)]
pub struct RecipeForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    base_image_id: String,
    #[serde(default)]
    setup_script: String,
    #[serde(default)]
    git_url: String,
    #[serde(default)]
    git_ref: String,
    #[serde(default)]
    setup_path: String,
    #[serde(default)]
    test_command: String,
    #[serde(default)]
    instance_type: String,
    #[serde(default)]
    setup_timeout_s: String,
    #[serde(default)]
    test_timeout_s: String,
    auto_release: Option<String>,
}

impl RecipeForm {
    /// The form as the recipe input it stands for.
    fn input(&self) -> Result<RecipeInput, AppError> {
        Ok(RecipeInput {
            name: self.name.clone(),
            base_image_id: self.base_image_id.clone(),
            setup_script: optional(&self.setup_script.replace("\r\n", "\n")),
            git_url: optional(&self.git_url),
            git_ref: optional(&self.git_ref),
            setup_path: optional(&self.setup_path),
            test_command: self.test_command.replace("\r\n", "\n"),
            instance_type: optional(&self.instance_type),
            setup_timeout_s: number("Setup timeout", &self.setup_timeout_s)?,
            test_timeout_s: number("Test timeout", &self.test_timeout_s)?,
            auto_release: Some(self.auto_release.is_some()),
        })
    }

    fn of(r: &RecipeRow) -> Self {
        Self {
            name: r.name.clone(),
            base_image_id: r.base_image_id.clone(),
            setup_script: r.setup_script.clone(),
            git_url: r.git_url.clone(),
            git_ref: r.git_ref.clone(),
            setup_path: r.setup_path.clone(),
            test_command: r.test_command.clone(),
            instance_type: r.instance_type.clone(),
            setup_timeout_s: r.setup_timeout_s.to_string(),
            test_timeout_s: r.test_timeout_s.to_string(),
            auto_release: r.auto_release.then(|| "on".to_owned()),
        }
    }
}

async fn render(
    layout: Layout,
    state: &AppState,
    form: RecipeForm,
    error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let (bakes, recipes, images) = tokio::try_join!(
        crate::db::bakes::list(&state.pool, 100),
        crate::db::bakes::recipes(&state.pool),
        crate::db::images::launchable(&state.pool),
    )?;
    let form = RecipeForm {
        setup_timeout_s: if form.setup_timeout_s.is_empty() {
            crate::bakes::DEFAULT_SETUP_TIMEOUT_S.to_string()
        } else {
            form.setup_timeout_s
        },
        test_timeout_s: if form.test_timeout_s.is_empty() {
            crate::bakes::DEFAULT_TEST_TIMEOUT_S.to_string()
        } else {
            form.test_timeout_s
        },
        ..form
    };
    super::html(
        &BakesPage {
            layout,
            bakes: bakes.into_iter().map(BakeView::from).collect(),
            recipes,
            images: images
                .into_iter()
                .map(|(id, name, version, _)| (id, name, version))
                .collect(),
            instance_types: state.settings.instance_types.clone(),
            form,
            error,
        },
        status,
    )
}

pub async fn list(layout: Layout, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    render(layout, &state, RecipeForm::default(), None, StatusCode::OK).await
}

fn number(field: &str, text: &str) -> Result<Option<i64>, AppError> {
    match text.trim() {
        "" => Ok(None),
        t => t.parse().map(Some).map_err(|_| {
            AppError::BadRequest(format!(
                "{field} must be a whole number of seconds, not {t:?}."
            ))
        }),
    }
}

fn optional(text: &str) -> Option<String> {
    Some(text.to_owned()).filter(|t| !t.trim().is_empty())
}

pub async fn create_recipe(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    form: web::Form<RecipeForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let result = match form.input() {
        Ok(input) => crate::bakes::create_recipe(
            &state.pool,
            &state.settings,
            &principal,
            source_ip(&req),
            &input,
        )
        .await
        .map_err(AppError::from),
        Err(e) => Err(e),
    };
    answer(
        result,
        |recipe| {
            flash(&session, format!("Added the recipe {}.", recipe.name));
            see_other("/bakes")
        },
        |message, status| render(layout, &state, form, Some(message), status),
    )
    .await
}

#[derive(serde::Deserialize)]
pub struct StartForm {
    #[serde(default)]
    recipe_id: String,
}

pub async fn start(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    form: web::Form<StartForm>,
) -> Result<HttpResponse, AppError> {
    let recipe_id: i64 = form
        .recipe_id
        .trim()
        .parse()
        .map_err(|_| AppError::NotFound(format!("There is no recipe {:?}.", form.recipe_id)))?;
    let (bake, _) = crate::bakes::start(
        &state.pool,
        &state.settings,
        StartedBy::User {
            principal: &principal,
            ip: source_ip(&req),
            via_api: false,
        },
        recipe_id,
        "",
    )
    .await?;
    flash(
        &session,
        format!("Baking {} v{}.", bake.recipe_name, bake.version),
    );
    Ok(see_other(&format!("/bakes/{}", bake.id)))
}

pub struct StepView {
    pub step: crate::domain::BakeStep,
    pub state: crate::domain::BakeState,
    pub detail: String,
    pub took: String,
}

impl From<StepRow> for StepView {
    fn from(s: StepRow) -> Self {
        let end = s.finished_at.unwrap_or_else(time::OffsetDateTime::now_utc);
        Self {
            took: format!("{} s", (end - s.started_at).whole_seconds().max(0)),
            step: s.step,
            state: s.state,
            detail: s.detail,
        }
    }
}

pub struct LogView {
    pub step: &'static str,
    pub job_id: i64,
    pub lines: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "partials/bake_live.html")]
struct BakeLive {
    can_act: bool,
    csrf: String,
    bake: BakeView,
    steps: Vec<StepView>,
    logs: Vec<LogView>,
}

#[derive(Template)]
#[template(path = "bake.html")]
struct BakePage {
    layout: Layout,
    live: BakeLive,
}

#[derive(serde::Deserialize)]
pub struct ShowQuery {
    #[serde(default)]
    live: bool,
}

fn bake_id(raw: &str) -> Result<i64, AppError> {
    raw.parse()
        .map_err(|_| AppError::NotFound(format!("There is no bake {raw}.")))
}

async fn live(state: &AppState, layout: &Layout, id: i64) -> Result<BakeLive, AppError> {
    let bake = crate::bakes::found(&state.pool, id).await?;
    let steps = crate::db::bakes::steps(&state.pool, id).await?;
    let mut logs = Vec::new();
    for (step, job) in [("setup", bake.setup_job_id), ("test", bake.test_job_id)] {
        if let Some(job_id) = job {
            let lines = crate::db::jobs::output(&state.pool, job_id, None, LOG_CHUNKS)
                .await?
                .into_iter()
                .map(|o| (o.stream, o.data))
                .collect();
            logs.push(LogView {
                step,
                job_id,
                lines,
            });
        }
    }
    Ok(BakeLive {
        can_act: layout.can_act(),
        csrf: layout.csrf.clone(),
        bake: bake.into(),
        steps: steps.into_iter().map(StepView::from).collect(),
        logs,
    })
}

pub async fn show(
    req: HttpRequest,
    layout: Layout,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<ShowQuery>,
) -> Result<HttpResponse, AppError> {
    let id = bake_id(&id)?;
    let live = live(&state, &layout, id).await?;
    if query.live && is_htmx(&req) {
        return super::html(&live, StatusCode::OK);
    }
    super::html(&BakePage { layout, live }, StatusCode::OK)
}

pub async fn cancel(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = bake_id(&id)?;
    let (_, done) = crate::bakes::cancel(&state.pool, &principal, source_ip(&req), id).await?;
    flash(
        &session,
        match done {
            Cancelled::Now => format!("Cancelled bake {id}; its builder is being terminated."),
            Cancelled::AlreadyOver => format!("Bake {id} had already ended."),
        },
    );
    Ok(see_other(&format!("/bakes/{id}")))
}

#[derive(Template)]
#[template(path = "recipe.html")]
struct RecipePage {
    layout: Layout,
    recipe: RecipeRow,
    images: Vec<(String, String, String)>,
    instance_types: Vec<String>,
    form: RecipeForm,
    error: Option<String>,
}

fn recipe_id(raw: &str) -> Result<i64, AppError> {
    raw.parse()
        .map_err(|_| AppError::NotFound(format!("There is no recipe {raw}.")))
}

async fn render_recipe(
    layout: Layout,
    state: &AppState,
    id: i64,
    form: Option<RecipeForm>,
    error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let recipe = crate::db::bakes::recipe(&state.pool, id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("There is no recipe {id}.")))?;
    let mut images: Vec<(String, String, String)> = crate::db::images::launchable(&state.pool)
        .await?
        .into_iter()
        .map(|(id, name, version, _)| (id, name, version))
        .collect();
    // The recipe's own base may be older than the choices the launch form offers.
    if !images.iter().any(|(i, _, _)| *i == recipe.base_image_id) {
        images.push((
            recipe.base_image_id.clone(),
            "its base".into(),
            String::new(),
        ));
    }
    super::html(
        &RecipePage {
            layout,
            form: form.unwrap_or_else(|| RecipeForm::of(&recipe)),
            recipe,
            images,
            instance_types: state.settings.instance_types.clone(),
            error,
        },
        status,
    )
}

/// `GET /bakes/recipes/{id}`: the recipe, and its edit form.
pub async fn show_recipe(
    layout: Layout,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = recipe_id(&id)?;
    render_recipe(layout, &state, id, None, None, StatusCode::OK).await
}

pub async fn update_recipe(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<RecipeForm>,
) -> Result<HttpResponse, AppError> {
    let id = recipe_id(&id)?;
    let form = form.into_inner();
    let result = match form.input() {
        Ok(input) => crate::bakes::update_recipe(
            &state.pool,
            &state.settings,
            &principal,
            source_ip(&req),
            id,
            &input,
        )
        .await
        .map_err(AppError::from),
        Err(e) => Err(e),
    };
    answer(
        result,
        |recipe| {
            flash(&session, format!("Saved the recipe {}.", recipe.name));
            see_other("/bakes")
        },
        |message, status| render_recipe(layout, &state, id, Some(form), Some(message), status),
    )
    .await
}
