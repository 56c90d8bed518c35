//! Librato's ingest API, as its clients call it (only the base URL changes): `POST /v1/metrics`
//! (legacy gauges and counters), `POST /v1/measurements` (tagged), and
//! `POST /v1/annotations/{stream}`. HTTP basic auth whose password is an operator's or
//! admin's API token. Also `GET /api/v1/series`, which the charts read.

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::auth::Principal;
use crate::metrics::ingest;
use crate::metrics::series::{self, Aggregate};
use crate::web::AppState;
use crate::web::error::AppError;

/// A request body larger than this is refused (413) before it is parsed: 1,000 tagged
/// measurements with their tags fit well within it.
pub const MAX_BODY: usize = 4 << 20;

/// Reads the body up to [`MAX_BODY`] and parses it as JSON.
async fn json_body(payload: web::Payload) -> Result<Value, AppError> {
    let body = super::body::read_limited(payload, MAX_BODY, || {
        format!(
            "The body is over {} MiB; send at most 1,000 measurements per request.",
            MAX_BODY >> 20
        )
    })
    .await?;
    serde_json::from_slice(&body)
        .map_err(|e| AppError::BadRequest(format!("The body is not valid JSON: {e}")))
}

fn window(state: &AppState) -> (i64, i64) {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    (
        now,
        now - (state.settings.metrics_retention_days * 86_400) as i64,
    )
}

async fn store(
    state: &AppState,
    measurements: Vec<ingest::Measurement>,
) -> Result<usize, AppError> {
    use crate::metrics::series_ids::Known;
    match state.series_ids.lookup(&measurements) {
        // The common case, a client sending the same series again: one statement.
        Known::All(ids) => {
            crate::db::metrics::insert_points(&state.pool, &measurements, &ids).await?;
            return Ok(measurements.len());
        }
        Known::Clash(why) => return Err(AppError::BadRequest(why)),
        Known::Incomplete => {}
    }
    let mut tx = state.pool.begin().await?;
    let ids = match crate::db::metrics::resolve_series(&mut tx, &measurements).await? {
        Ok(ids) => ids,
        Err(why) => return Err(AppError::BadRequest(why)),
    };
    crate::db::metrics::insert_points(&mut *tx, &measurements, &ids).await?;
    tx.commit().await?;
    state.series_ids.learn(&measurements, &ids);
    Ok(measurements.len())
}

/// `POST /v1/metrics` -> 200 when every measurement was stored; 400 naming the first bad one
/// (nothing stored).
pub async fn legacy(
    _who: Principal,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, AppError> {
    let body = json_body(payload).await?;
    let (now, oldest) = window(&state);
    let measurements = ingest::legacy(&body, now, oldest).map_err(|e| AppError::BadRequest(e.0))?;
    store(&state, measurements).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// `POST /v1/measurements` -> 202 with Librato's summary.
pub async fn tagged(
    _who: Principal,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, AppError> {
    let body = json_body(payload).await?;
    let (now, oldest) = window(&state);
    let measurements = ingest::tagged(&body, now, oldest).map_err(|e| AppError::BadRequest(e.0))?;
    let n = store(&state, measurements).await?;
    Ok(HttpResponse::Accepted().json(json!({
        "measurements": {"summary": {"total": n, "accepted": n, "failed": 0, "filtered": 0}}
    })))
}

/// `POST /v1/annotations/{stream}` `{"title", "description"?, "source"?, "start_time"?,
/// "end_time"?, "links"?}` -> 201.
pub async fn annotate(
    who: Principal,
    state: web::Data<AppState>,
    stream: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, AppError> {
    let stream = stream.into_inner();
    ingest::check_name("the stream", &stream).map_err(|e| AppError::BadRequest(e.0))?;
    let body = json_body(payload).await?;
    let Value::Object(m) = &body else {
        return Err(AppError::BadRequest(
            "The body must be a JSON object with a title.".into(),
        ));
    };
    let text = |field: &str, max: usize| -> Result<String, AppError> {
        match m.get(field) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) if s.chars().count() <= max => Ok(s.clone()),
            Some(Value::String(_)) => Err(AppError::BadRequest(format!(
                "{field} has at most {max} characters."
            ))),
            Some(other) => Err(AppError::BadRequest(format!(
                "{field} must be a string, not {other}."
            ))),
        }
    };
    let title = text("title", 255)?;
    if title.trim().is_empty() {
        return Err(AppError::BadRequest("An annotation needs a title.".into()));
    }
    let description = text("description", 1000)?;
    let source = text("source", 255)?;
    let (now, oldest) = window(&state);
    let at = |field: &str| -> Result<Option<OffsetDateTime>, AppError> {
        match m.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let t = v.as_i64().ok_or_else(|| {
                    AppError::BadRequest(format!("{field} must be unix seconds."))
                })?;
                if t < oldest || t > now + ingest::MAX_FUTURE_S {
                    return Err(AppError::BadRequest(format!(
                        "{field} {t} is outside the accepted window."
                    )));
                }
                Ok(OffsetDateTime::from_unix_timestamp(t).ok())
            }
        }
    };
    let start = at("start_time")?.unwrap_or_else(OffsetDateTime::now_utc);
    let end = at("end_time")?;
    if end.is_some_and(|e| e < start) {
        return Err(AppError::BadRequest(
            "end_time is before start_time.".into(),
        ));
    }
    let links = match m.get("links") {
        None | Some(Value::Null) => json!([]),
        Some(v @ Value::Array(_)) => v.clone(),
        Some(other) => {
            return Err(AppError::BadRequest(format!(
                "links must be a list, not {other}."
            )));
        }
    };
    let mut tx = state.pool.begin().await?;
    let id = crate::db::metrics::insert_annotation(
        &mut tx,
        &crate::db::metrics::NewAnnotation {
            stream: &stream,
            title: &title,
            description: &description,
            source: &source,
            start_time: start,
            end_time: end,
            links: &links,
            created_by: &who.name,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(HttpResponse::Created().json(json!({
        "id": id, "title": title, "description": description, "source": source,
        "start_time": start.unix_timestamp(), "end_time": end.map(|e| e.unix_timestamp()),
    })))
}

#[derive(serde::Deserialize)]
pub struct SeriesQuery {
    metric: Option<String>,
    source: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    resolution: Option<i64>,
    aggregate: Option<String>,
    /// Combine the sources into one line: max, min, avg or sum over them.
    across: Option<String>,
}

/// Validates `GET /api/v1/series` parameters: unix-second range (default the last
/// hour), resolution in seconds (default: the coarsest giving >= 300 points), aggregate.
pub fn series_query(q: &SeriesQuery, now: i64) -> Result<series::Query, AppError> {
    let metric = q.metric.clone().unwrap_or_default();
    ingest::check_name("metric", &metric).map_err(|e| AppError::BadRequest(e.0))?;
    let to = q.to.unwrap_or(now);
    let from = q.from.unwrap_or(to - 3600);
    if from >= to {
        return Err(AppError::BadRequest("from must be before to.".into()));
    }
    let span = to - from;
    if span > 400 * 86_400 {
        return Err(AppError::BadRequest(
            "Ask for at most 400 days at once.".into(),
        ));
    }
    let resolution = q
        .resolution
        .unwrap_or_else(|| series::default_resolution(span));
    if resolution < 1 || span / resolution > 20_000 {
        return Err(AppError::BadRequest(format!(
            "resolution {resolution} s gives too many points over {span} s (at most 20,000)."
        )));
    }
    let aggregate = match q.aggregate.as_deref() {
        None | Some("") => Aggregate::Avg,
        Some(a) => Aggregate::parse(a).ok_or_else(|| {
            AppError::BadRequest(format!(
                "aggregate {a:?} is not one of avg, sum, min, max, count."
            ))
        })?,
    };
    let across = match q.across.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(a @ ("max" | "min" | "avg" | "sum")) => Aggregate::parse(a),
        Some(a) => {
            return Err(AppError::BadRequest(format!(
                "across {a:?} is not one of max, min, avg, sum."
            )));
        }
    };
    let at = |t: i64| {
        OffsetDateTime::from_unix_timestamp(t)
            .map_err(|_| AppError::BadRequest(format!("{t} is not a time Kiln can read.")))
    };
    Ok(series::Query {
        across,
        metric,
        source_like: series::like_of(q.source.as_deref().filter(|s| !s.is_empty()).unwrap_or("*")),
        from: at(from)?,
        to: at(to)?,
        resolution,
        aggregate,
    })
}

/// Sources that name an image ("running:ami-0abc", as `kiln.servers` records them), named as
/// people name the image ("running: worker v7"), for legends: source -> name.
async fn image_names(
    pool: &sqlx::PgPool,
    series: &[series::Series],
) -> Result<std::collections::BTreeMap<String, String>, AppError> {
    let ids: Vec<String> = series
        .iter()
        .filter_map(|s| s.source.split_once(':').map(|(_, id)| id.to_owned()))
        .collect();
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let images = crate::db::images::names_of(pool, &ids).await?;
    Ok(series
        .iter()
        .filter_map(|s| {
            let (head, id) = s.source.split_once(':')?;
            let i = images.iter().find(|i| i.id == id)?;
            Some((
                s.source.clone(),
                format!(
                    "{head}: {}",
                    crate::web::view::image_label(id, &i.name, &i.version)
                ),
            ))
        })
        .collect())
}

/// `GET /api/v1/series?metric=&source=&from=&to=&resolution=&aggregate=&across=`
pub async fn get_series(
    state: web::Data<AppState>,
    query: web::Query<SeriesQuery>,
) -> Result<HttpResponse, AppError> {
    let q = series_query(&query, OffsetDateTime::now_utc().unix_timestamp())?;
    let series = series::run(&state.pool, &q).await?;
    // Only the console's own `kiln.servers` names images in its sources; other metrics' sources
    // are not looked up (a chart's every request would pay a query for nothing).
    let names = if q.metric == "kiln.servers" {
        image_names(&state.pool, &series).await?
    } else {
        Default::default()
    };
    Ok(HttpResponse::Ok().json(json!({
        "metric": q.metric,
        "resolution": q.resolution,
        "series": series,
        "names": names,
    })))
}
