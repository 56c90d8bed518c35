//! The Images page (the catalogue, newest first, the current image marked), an image's own
//! page, and adding an image.

use actix_session::Session;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

use super::{is_htmx, see_other, source_ip};
use crate::auth::Principal;
use crate::cloud::Provider;
use crate::db::images::ImageRow;
use crate::fleet::images::AddImage;
use crate::web::AppState;
use crate::web::error::AppError;
use crate::web::layout::{Layout, flash};
use crate::web::pages::audit::EventView;
use crate::web::view::{When, when};

pub struct ImageView {
    pub id: String,
    pub name: String,
    pub version: String,
    pub description: String,
    pub source_revision: String,
    pub state: crate::domain::ImageState,
    pub state_reason: String,
    pub added_by: String,
    pub created: When,
    pub current: bool,
    pub was_current: bool,
    pub servers: i64,
}

impl From<ImageRow> for ImageView {
    fn from(r: ImageRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            version: r.version,
            description: r.description,
            source_revision: r.source_revision,
            state: r.state,
            state_reason: r.state_reason,
            added_by: r.added_by,
            created: when(r.created_at),
            current: r.current,
            was_current: r.was_current,
            servers: r.servers,
        }
    }
}

/// One row of the Images page's table: the image and its marks.
pub struct CatalogueView {
    pub row: crate::db::images::CatalogueRow,
    pub created: When,
    pub current: bool,
    pub was_current: bool,
    pub servers: i64,
    /// Rolled back from (and not released again since): when and by whom.
    pub fled: Option<FledView>,
}

/// A rollback away from an image, as its row and page say it.
pub struct FledView {
    pub at: When,
    pub by: String,
}

impl From<crate::db::images::Fled> for FledView {
    fn from(f: crate::db::images::Fled) -> Self {
        Self {
            at: when(f.at),
            by: f.by,
        }
    }
}

/// The whole catalogue, newest first, each image marked (current, was current, servers).
async fn catalogue(pool: &sqlx::PgPool) -> Result<Vec<CatalogueView>, AppError> {
    let (rows, mut marks) = tokio::try_join!(
        crate::db::images::catalogue(pool, MAX_IMAGES),
        crate::db::images::catalogue_marks(pool),
    )?;
    let mut fled: std::collections::HashMap<String, FledView> = std::mem::take(&mut marks.fled)
        .into_iter()
        .map(|f| (f.image_id.clone(), FledView::from(f)))
        .collect();
    Ok(rows
        .into_iter()
        .map(|row| CatalogueView {
            fled: fled.remove(&row.id),
            current: marks.current.as_deref() == Some(row.id.as_str()),
            was_current: marks.released.contains(&row.id),
            servers: marks.servers.get(&row.id).copied().unwrap_or(0),
            created: when(row.created_at),
            row,
        })
        .collect())
}

#[derive(Template)]
#[template(path = "images.html")]
struct ImagesPage {
    layout: Layout,
    images: Vec<CatalogueView>,
    any_pending: bool,
    aws: bool,
    form: AddImage,
    error: Option<String>,
    can_act: bool,
    csrf: String,
    active: Option<crate::web::pages::rollouts::RolloutView>,
}

#[derive(Template)]
#[template(path = "partials/image_rows.html")]
struct ImageRows {
    images: Vec<CatalogueView>,
    any_pending: bool,
    can_act: bool,
}

/// The catalogue is small (a thousand images is a big one); one page shows it all.
const MAX_IMAGES: i64 = 5000;

/// What the page reads: the catalogue and, for the whole page, the rollout in progress.
pub struct ImagesData {
    images: Vec<CatalogueView>,
    active: Option<crate::db::rollouts::RolloutRow>,
}

/// The page's reads.
async fn fetch(pool: &sqlx::PgPool, whole_page: bool) -> Result<ImagesData, AppError> {
    let (images, active) = tokio::try_join!(catalogue(pool), async {
        if whole_page {
            Ok(crate::db::rollouts::active(pool).await?)
        } else {
            Ok(None)
        }
    })?;
    Ok(ImagesData { images, active })
}

/// Whether a GET asks for the whole page or only the table's rows (its live refresh).
fn whole_page(req: &HttpRequest, query: &RowsQuery) -> bool {
    !(query.rows && is_htmx(req))
}

async fn render(
    layout: Layout,
    state: &AppState,
    form: AddImage,
    error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let data = fetch(&state.pool, true).await?;
    render_read(layout, state, data, form, error, status)
}

fn render_read(
    layout: Layout,
    state: &AppState,
    data: ImagesData,
    form: AddImage,
    error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let ImagesData { images, active } = data;
    let any_pending = images
        .iter()
        .any(|i| i.row.state == crate::domain::ImageState::Pending);
    let page = ImagesPage {
        can_act: layout.can_act(),
        csrf: layout.csrf.clone(),
        layout,
        any_pending,
        images,
        aws: state.cloud.name() == "aws",
        form,
        error,
        active: active.map(Into::into),
    };
    super::html(&page, status)
}

#[derive(serde::Deserialize)]
pub struct RowsQuery {
    #[serde(default)]
    rows: bool,
}

pub async fn list(
    req: HttpRequest,
    layout: Layout,
    state: web::Data<AppState>,
    query: web::Query<RowsQuery>,
) -> Result<HttpResponse, AppError> {
    let whole = whole_page(&req, &query);
    let data = fetch(&state.pool, whole).await?;
    if !whole {
        // The live refresh of the table while an image is pending.
        let images = data.images;
        let any_pending = images
            .iter()
            .any(|i| i.row.state == crate::domain::ImageState::Pending);
        return super::html(
            &ImageRows {
                images,
                any_pending,
                can_act: layout.can_act(),
            },
            StatusCode::OK,
        );
    }
    render_read(
        layout,
        &state,
        data,
        AddImage::default(),
        None,
        StatusCode::OK,
    )
}

pub async fn add(
    req: HttpRequest,
    layout: Layout,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    form: web::Form<AddImage>,
) -> Result<HttpResponse, AppError> {
    let input = form.into_inner();
    match crate::fleet::images::add(
        &state.pool,
        &state.cloud,
        &principal,
        source_ip(&req),
        &input,
    )
    .await
    {
        Ok(image) => {
            flash(
                &session,
                format!(
                    "Added {} ({}); checking it at the provider…",
                    image.name, image.id
                ),
            );
            Ok(see_other("/images"))
        }
        Err(crate::error::Error::Invalid(message)) => {
            render(
                layout,
                &state,
                input,
                Some(message),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
        Err(crate::error::Error::Conflict(message)) => {
            render(layout, &state, input, Some(message), StatusCode::CONFLICT).await
        }
        Err(other) => Err(other.into()),
    }
}

#[derive(Template)]
#[template(path = "image.html")]
struct ImagePage {
    layout: Layout,
    instance_types: Vec<String>,
    max_count: u32,
    image: ImageView,
    releases: Vec<ReleaseView>,
    rollouts: Vec<crate::web::pages::rollouts::RolloutView>,
    events: Vec<EventView>,
    defaults: crate::domain::release_plan::Defaults,
    /// Alert rules a release may be guarded by: (id, name).
    alerts: Vec<(i64, String)>,
    /// The bake that made it (its log and test report are on the bake's page).
    bake: Option<(i64, String, i32)>,
    /// Rolled back from and not released again since.
    fled: Option<FledView>,
}

pub struct ReleaseView {
    pub kind: String,
    pub to: String,
    pub to_label: String,
    pub from: String,
    pub from_label: String,
    pub by: String,
    pub at: When,
}

pub async fn show(
    layout: Layout,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    let image = crate::db::images::find(&state.pool, &id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("There is no image {id} in the catalogue.")))?;
    let releases = crate::db::images::releases_of(&state.pool, &id)
        .await?
        .into_iter()
        .map(|r| ReleaseView {
            kind: r.kind,
            to_label: crate::web::view::image_label(&r.image_id, &r.to_name, &r.to_version),
            from_label: r
                .previous_image_id
                .as_deref()
                .map_or_else(String::new, |id| {
                    crate::web::view::image_label(
                        id,
                        r.from_name.as_deref().unwrap_or_default(),
                        r.from_version.as_deref().unwrap_or_default(),
                    )
                }),
            to: r.image_id,
            from: r.previous_image_id.unwrap_or_default(),
            by: r.released_by,
            at: when(r.at),
        })
        .collect();
    let target = format!("image:{id}");
    let (events, rollouts, bake, alerts, fled) = tokio::try_join!(
        crate::db::audit::for_target(&state.pool, &target, 50),
        crate::db::rollouts::list(&state.pool, Some(&id), None, 50),
        crate::db::bakes::of_image(&state.pool, &id),
        crate::db::alerts::rules(&state.pool),
        crate::db::images::rolled_back_from(&state.pool, &id),
    )?;
    let events = events.into_iter().map(EventView::from).collect();
    super::html(
        &ImagePage {
            layout,
            instance_types: state.settings.instance_types.clone(),
            max_count: state.settings.max_servers,
            image: image.into(),
            releases,
            rollouts: rollouts.into_iter().map(Into::into).collect(),
            events,
            defaults: state.settings.rollout_defaults()?,
            alerts: alerts.into_iter().map(|r| (r.id, r.name)).collect(),
            bake,
            fled: fled.map(|(_, by, at)| FledView { at: when(at), by }),
        },
        StatusCode::OK,
    )
}

/// `POST /images/{id}/deregister`
pub async fn deregister(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    let ip = source_ip(&req);
    let queued = crate::fleet::images::deregister(&state.pool, &principal, ip, &id).await?;
    flash(
        &session,
        if queued {
            format!("Deregistering {id}.")
        } else {
            format!("{id} was already deregistered.")
        },
    );
    Ok(see_other("/images"))
}

pub struct CleanupView {
    pub id: String,
    pub name: String,
    pub version: String,
    pub state: crate::domain::ImageState,
    pub created: When,
}

#[derive(Template)]
#[template(path = "image_cleanup.html")]
struct CleanupPage {
    layout: Layout,
    keep: u32,
    min_age_days: u32,
    images: Vec<CleanupView>,
    ids: String,
}

fn cleanup_rule(state: &AppState) -> crate::fleet::image_cleanup::Rule {
    crate::fleet::image_cleanup::Rule {
        keep: state.settings.image_keep,
        min_age_days: state.settings.image_min_age_days,
    }
}

/// `GET /images/cleanup`: what the old-image cleanup would deregister now.
pub async fn cleanup_preview(
    layout: Layout,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let rule = cleanup_rule(&state);
    let images: Vec<CleanupView> = crate::fleet::image_cleanup::candidates(&state.pool, rule)
        .await?
        .into_iter()
        .map(|c| CleanupView {
            id: c.id,
            name: c.name,
            version: c.version,
            state: c.state,
            created: when(c.created_at),
        })
        .collect();
    let ids = images
        .iter()
        .map(|i| i.id.as_str())
        .collect::<Vec<_>>()
        .join(",");
    super::html(
        &CleanupPage {
            layout,
            keep: rule.keep,
            min_age_days: rule.min_age_days,
            images,
            ids,
        },
        StatusCode::OK,
    )
}

#[derive(serde::Deserialize)]
pub struct CleanupForm {
    #[serde(default)]
    ids: String,
}

/// `POST /images/cleanup`: deregisters the previewed images that still qualify.
pub async fn cleanup(
    req: HttpRequest,
    principal: Principal,
    session: Session,
    state: web::Data<AppState>,
    form: web::Form<CleanupForm>,
) -> Result<HttpResponse, AppError> {
    let ids: Vec<String> = form
        .ids
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let gone = crate::fleet::image_cleanup::clean(
        &state.pool,
        &principal,
        source_ip(&req),
        cleanup_rule(&state),
        &ids,
    )
    .await?;
    flash(
        &session,
        match gone.len() {
            0 => "Nothing was deregistered: none of those images qualifies any more.".to_owned(),
            1 => "Deregistered 1 old image.".to_owned(),
            n => format!("Deregistered {n} old images."),
        },
    );
    Ok(see_other("/images"))
}
