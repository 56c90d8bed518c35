//! The local provider: "production-like on every development machine". Images are rows in
//! `local_images`; a server is a row in `local_instances` plus a `kiln agent` process on this
//! machine. The database is the provider's memory, so a restarted console finds its running
//! servers again (by pid and command line) and marks those that died as terminated.

mod process;

use std::path::PathBuf;
use std::time::Duration;

use rand::RngCore;
use sqlx::PgPool;
use sqlx::types::Json;
use time::OffsetDateTime;

use super::{
    CloudError, CloudResult, ErrorKind, FLEET_TAG, Image, ImageQuery, ImageState, LAUNCH_TOKEN_TAG,
    LaunchOutcome, LaunchRequest, Page, Provider, Server, ServerFilter, ServerState, Tags,
};

#[derive(Debug, Clone)]
pub struct LocalSettings {
    pub fleet: String,
    /// The `kiln` binary that runs as each server's agent.
    pub agent_exe: PathBuf,
    /// Where each server's agent writes its output (`<server id>.log`).
    pub log_dir: PathBuf,
    /// How long a terminate waits after SIGTERM before SIGKILL.
    pub terminate_grace: Duration,
    /// Jobs each local server's agent runs at once (`kiln agent --slots`).
    pub agent_slots: u32,
}

pub struct LocalProvider {
    pool: PgPool,
    settings: LocalSettings,
}

pub const IMAGE_PREFIX: &str = "ami-local-";
const SERVER_PREFIX: &str = "i-local-";

pub fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len.div_ceil(2)];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)[..len].to_owned()
}

fn is_local_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|hex| {
        (8..=17).contains(&hex.len())
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

#[derive(sqlx::FromRow)]
struct ImageRow {
    id: String,
    name: String,
    description: String,
    state: ImageState,
    tags: Json<Tags>,
    created_at: OffsetDateTime,
}

impl From<ImageRow> for Image {
    fn from(r: ImageRow) -> Self {
        Image {
            id: r.id,
            name: r.name,
            description: r.description,
            state: r.state,
            tags: r.tags.0,
            created_at: Some(r.created_at),
            // Local servers run this very binary: whatever the machine is, it fits.
            architecture: None,
        }
    }
}

#[derive(sqlx::FromRow)]
struct InstanceRow {
    id: String,
    image_id: String,
    instance_type: String,
    state: ServerState,
    tags: Json<Tags>,
    pid: Option<i32>,
    launched_at: OffsetDateTime,
}

impl From<InstanceRow> for Server {
    fn from(r: InstanceRow) -> Self {
        Server {
            state: r.state,
            id: r.id,
            image_id: r.image_id,
            instance_type: r.instance_type,
            tags: r.tags.0,
            launched_at: Some(r.launched_at),
        }
    }
}

fn db_error(e: sqlx::Error) -> CloudError {
    CloudError::new(
        ErrorKind::Unavailable,
        format!("The local provider's database failed: {e}"),
    )
}

impl LocalProvider {
    /// Opens the provider; a fleet with no images gets its base image.
    pub async fn new(pool: PgPool, settings: LocalSettings) -> anyhow::Result<Self> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kiln.local.base_image'))")
            .execute(&mut *tx)
            .await?;
        let any: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM local_images WHERE tags @> $1)")
                .bind(Json(Tags::from([(
                    FLEET_TAG.to_owned(),
                    settings.fleet.clone(),
                )])))
                .fetch_one(&mut *tx)
                .await?;
        if !any {
            let tags = Tags::from([
                (FLEET_TAG.to_owned(), settings.fleet.clone()),
                ("kiln:version".to_owned(), "1".to_owned()),
            ]);
            sqlx::query(
                "INSERT INTO local_images (id, name, description, state, tags) VALUES ($1, 'base', $2, 'available', $3)",
            )
            .bind(format!("{IMAGE_PREFIX}{}", random_hex(17)))
            .bind("The local provider's base image: servers run the kiln agent from this machine.")
            .bind(Json(tags))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Self { pool, settings })
    }

    fn fleet_tags(&self, extra: &Tags, launch_token: Option<&str>) -> Tags {
        let mut tags = extra.clone();
        tags.insert(FLEET_TAG.to_owned(), self.settings.fleet.clone());
        if let Some(token) = launch_token {
            tags.insert(LAUNCH_TOKEN_TAG.to_owned(), token.to_owned());
        }
        tags
    }

    /// Starts the process of every server of this launch that has none yet (a previous try
    /// may have stopped between recording them and starting them).
    async fn start_missing(&self, token: &str, request: &LaunchRequest) -> CloudResult<()> {
        // An image may name the agent its servers run (a broken image's never comes up), and
        // the environment it runs with — what its jobs see, as a real image's installed
        // software is (an image whose jobs fail or run slower, honestly).
        type Unstarted = (
            String,
            Option<String>,
            Option<Json<std::collections::BTreeMap<String, String>>>,
        );
        let unstarted: Vec<Unstarted> =
            sqlx::query_as("SELECT i.id, img.agent_exe, img.agent_env FROM local_instances i LEFT JOIN local_images img ON img.id = i.image_id
                            WHERE i.launch_token = $1 AND i.pid IS NULL AND i.state = 'pending' ORDER BY i.id")
                .bind(token)
                .fetch_all(&self.pool)
                .await
                .map_err(db_error)?;
        for (id, agent_exe, agent_env) in unstarted {
            let exe = agent_exe
                .map(PathBuf::from)
                .unwrap_or_else(|| self.settings.agent_exe.clone());
            let pid = process::spawn_agent(
                &exe,
                &id,
                &request.bootstrap.console_url,
                &request.bootstrap.enrollment_token,
                self.settings.agent_slots,
                &self.settings.log_dir,
                &agent_env.map(|e| e.0).unwrap_or_default(),
            )
            .map_err(|e| {
                CloudError::new(
                    ErrorKind::Unavailable,
                    format!("Failed to start the agent of {id}: {e}"),
                )
            })?;
            sqlx::query("UPDATE local_instances SET pid = $2, state = 'running' WHERE id = $1 AND pid IS NULL")
                .bind(&id)
                .bind(pid as i32)
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    async fn servers_of_launch(&self, token: &str) -> CloudResult<Vec<Server>> {
        let rows: Vec<InstanceRow> = sqlx::query_as(
            "SELECT id, image_id, instance_type, state, tags, pid, launched_at FROM local_instances WHERE launch_token = $1 ORDER BY id",
        )
        .bind(token)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows.into_iter().map(Server::from).collect())
    }

    /// Marks running servers whose process has gone as terminated (it died or was killed).
    async fn refresh(&self, rows: &mut [InstanceRow]) -> CloudResult<()> {
        for row in rows.iter_mut() {
            let live_state = matches!(row.state, ServerState::Running | ServerState::Stopping);
            if let (true, Some(pid)) = (live_state, row.pid)
                && !process::is_alive(pid as u32, &row.id)
            {
                tracing::warn!(server.id = %row.id, pid, "local server's process is gone; marking it terminated");
                sqlx::query(
                        "UPDATE local_instances SET state = 'terminated', terminated_at = now() WHERE id = $1 AND state = $2",
                    )
                    .bind(&row.id)
                    .bind(row.state)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error)?;
                row.state = ServerState::Terminated;
            }
        }
        Ok(())
    }
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    fn fleet(&self) -> &str {
        &self.settings.fleet
    }

    fn check_image_id(&self, id: &str) -> CloudResult<()> {
        if is_local_id(id, IMAGE_PREFIX) {
            Ok(())
        } else {
            Err(CloudError::invalid(format!(
                "{id:?} is not a local image id (ami-local- followed by 8 to 17 hex digits)."
            )))
        }
    }

    fn check_server_id(&self, id: &str) -> CloudResult<()> {
        if is_local_id(id, SERVER_PREFIX) {
            Ok(())
        } else {
            Err(CloudError::invalid(format!(
                "{id:?} is not a local server id (i-local- followed by 8 to 17 hex digits)."
            )))
        }
    }

    async fn list_images(
        &self,
        query: &ImageQuery,
        page: Option<String>,
    ) -> CloudResult<Page<Image>> {
        let offset: i64 = page.as_deref().and_then(|p| p.parse().ok()).unwrap_or(0);
        let tags: Tags = query.tags.iter().cloned().collect();
        const PAGE: i64 = 1000;
        let rows: Vec<ImageRow> = sqlx::query_as(
            "SELECT id, name, description, state, tags, created_at FROM local_images
             WHERE tags @> $1 AND state <> 'deregistered' ORDER BY created_at DESC, id OFFSET $2 LIMIT $3",
        )
        .bind(Json(tags))
        .bind(offset)
        .bind(PAGE + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let more = rows.len() as i64 > PAGE;
        let items = rows
            .into_iter()
            .take(PAGE as usize)
            .map(Image::from)
            .collect();
        Ok(Page {
            items,
            next: more.then(|| (offset + PAGE).to_string()),
        })
    }

    async fn get_image(&self, id: &str) -> CloudResult<Option<Image>> {
        self.check_image_id(id)?;
        let row: Option<ImageRow> = sqlx::query_as(
            "SELECT id, name, description, state, tags, created_at FROM local_images WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(row.map(Image::from))
    }

    async fn create_image(
        &self,
        server_id: &str,
        name: &str,
        description: &str,
        tags: &Tags,
    ) -> CloudResult<String> {
        self.check_server_id(server_id)?;
        let state: Option<ServerState> =
            sqlx::query_scalar("SELECT state FROM local_instances WHERE id = $1")
                .bind(server_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        match state {
            None => {
                return Err(CloudError::not_found(format!(
                    "There is no local server {server_id}."
                )));
            }
            Some(ServerState::Terminated) => {
                return Err(CloudError::invalid(format!(
                    "Server {server_id} is terminated; an image needs a live server."
                )));
            }
            Some(
                ServerState::Pending
                | ServerState::Running
                | ServerState::Stopping
                | ServerState::Stopped
                | ServerState::ShuttingDown,
            ) => {}
        }
        let id = format!("{IMAGE_PREFIX}{}", random_hex(17));
        sqlx::query(
            "INSERT INTO local_images (id, name, description, state, tags, source_server_id) VALUES ($1, $2, $3, 'available', $4, $5)",
        )
        .bind(&id)
        .bind(name)
        .bind(description)
        .bind(Json(self.fleet_tags(tags, None)))
        .bind(server_id)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(id)
    }

    async fn deregister_image(&self, id: &str) -> CloudResult<()> {
        self.check_image_id(id)?;
        sqlx::query("UPDATE local_images SET state = 'deregistered' WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn register_image(
        &self,
        id: &str,
        name: &str,
        description: &str,
        tags: &Tags,
    ) -> CloudResult<()> {
        self.check_image_id(id)?;
        // Idempotent: registering the same id again changes nothing.
        sqlx::query(
            "INSERT INTO local_images (id, name, description, state, tags) VALUES ($1, $2, $3, 'available', $4)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(name)
        .bind(description)
        .bind(Json(self.fleet_tags(tags, None)))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn launch(&self, request: &LaunchRequest) -> CloudResult<LaunchOutcome> {
        self.check_image_id(&request.image_id)?;
        let image = self.get_image(&request.image_id).await?.ok_or_else(|| {
            CloudError::not_found(format!("There is no local image {}.", request.image_id))
        })?;
        if image.state != ImageState::Available {
            return Err(CloudError::invalid(format!(
                "Image {} is {}; only available images can be launched.",
                image.id,
                image.state.as_str()
            )));
        }
        let token = &request.client_token;
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        // One launch per token at a time, across every console sharing this database.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kiln.local.launch:' || $1))")
            .bind(token)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let existing: i64 =
            sqlx::query_scalar("SELECT count(*) FROM local_instances WHERE launch_token = $1")
                .bind(token)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
        let already_launched = existing > 0;
        if !already_launched {
            let tags = Json(self.fleet_tags(&request.tags, Some(token)));
            for _ in 0..request.count {
                sqlx::query(
                    "INSERT INTO local_instances (id, image_id, instance_type, state, tags, launch_token)
                     VALUES ($1, $2, $3, 'pending', $4, $5)",
                )
                .bind(format!("{SERVER_PREFIX}{}", random_hex(17)))
                .bind(&request.image_id)
                .bind(&request.instance_type)
                .bind(&tags)
                .bind(token)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            }
        }
        tx.commit().await.map_err(db_error)?;
        self.start_missing(token, request).await?;
        let servers = self.servers_of_launch(token).await?;
        Ok(LaunchOutcome {
            requested: request.count,
            servers,
            already_launched,
            shortfall: None,
        })
    }

    async fn describe_servers(
        &self,
        filter: &ServerFilter,
        page: Option<String>,
        page_size: u32,
    ) -> CloudResult<Page<Server>> {
        let offset: i64 = page.as_deref().and_then(|p| p.parse().ok()).unwrap_or(0);
        let size = i64::from(page_size.clamp(1, 1000));
        let tags: Tags = filter.tags.iter().cloned().collect();
        let states = &filter.states;
        let mut rows: Vec<InstanceRow> = sqlx::query_as(
            "SELECT id, image_id, instance_type, state, tags, pid, launched_at FROM local_instances
             WHERE tags @> $1 AND (cardinality($2::TEXT[]) = 0 OR id = ANY($2))
             ORDER BY launched_at, id OFFSET $3 LIMIT $4",
        )
        .bind(Json(tags))
        .bind(&filter.ids)
        .bind(offset)
        .bind(size + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let more = rows.len() as i64 > size;
        rows.truncate(size as usize);
        self.refresh(&mut rows).await?;
        // States are filtered after the liveness refresh, so a dead "running" server is not
        // reported as running.
        let items = rows
            .into_iter()
            .map(Server::from)
            .filter(|s| states.is_empty() || states.contains(&s.state))
            .collect();
        Ok(Page {
            items,
            next: more.then(|| (offset + size).to_string()),
        })
    }

    async fn terminate(&self, ids: &[String]) -> CloudResult<()> {
        for id in ids {
            self.check_server_id(id)?;
        }
        let rows: Vec<(String, Option<i32>)> = sqlx::query_as(
            "UPDATE local_instances SET state = 'shutting-down'
             WHERE id = ANY($1) AND state <> 'terminated' RETURNING id, pid",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let grace = self.settings.terminate_grace;
        let stops = rows
            .iter()
            .filter_map(|(id, pid)| pid.map(|pid| process::stop(pid as u32, id, grace)));
        futures_util::future::join_all(stops).await;
        let done: Vec<String> = rows.into_iter().map(|(id, _)| id).collect();
        sqlx::query("UPDATE local_instances SET state = 'terminated', terminated_at = now() WHERE id = ANY($1)")
            .bind(&done)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn tag(&self, ids: &[String], tags: &Tags) -> CloudResult<()> {
        let tags = Json(tags.clone());
        for table in ["local_instances", "local_images"] {
            let sql = if table == "local_instances" {
                "UPDATE local_instances SET tags = tags || $2 WHERE id = ANY($1)"
            } else {
                "UPDATE local_images SET tags = tags || $2 WHERE id = ANY($1)"
            };
            sqlx::query(sql)
                .bind(ids)
                .bind(&tags)
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }
}
