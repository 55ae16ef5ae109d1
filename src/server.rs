//! The HTTP server: shared state, the axum router, start-up and graceful shutdown.
//!
//! Why it exists: tests and `main` build the very same server through [`Server::start`], so
//! every integration test exercises the real router on a real socket. Shutdown is explicit
//! because axum's graceful shutdown does not end upgraded WebSocket sessions: we cancel every
//! session (close 1001), wait for them, then stop every room (each flushes and compacts its
//! document) and flush the store before returning.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::api::{self, ApiError};
use crate::auth::{token_from_parts, unix_now, Access, AuthConfig, Authenticator, Principal};
use crate::cluster::Cluster;
use crate::config::{Config, ConfigError};
use crate::net::ConnLimiter;
use crate::room::{PeerInfo, Registry};
use crate::sessions::Sessions;
use crate::store::{Flusher, SharedStore, SledStore, StoreError};

/// How long sled may take to open the data directory before start-up fails.
const STORE_OPEN_DEADLINE: Duration = Duration::from_secs(20);
/// How long shutdown waits for sessions to close before going on regardless.
const SESSION_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the last references to the store to go.
const STORE_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid authentication settings: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("cannot read the JWT public key {path}: {source}")]
    KeyFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("cluster mode: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub store: SharedStore,
    /// Every WebSocket session, so shutdown can wait for them.
    pub connections: TaskTracker,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    pub next_conn: Arc<AtomicU64>,
    pub auth: Arc<Authenticator>,
    /// Live sessions by identity (for revocation).
    pub sessions: Arc<Sessions>,
    /// Open connections, globally and per IP (the caps of [`crate::net`]).
    pub conn_limiter: Arc<ConnLimiter>,
    /// Checks client updates, with one cap on concurrent checks for the whole server.
    pub decoder: Arc<crate::decode::Decoder>,
}

impl AppState {
    /// The verified principal of a request (open development mode: everyone).
    pub fn principal(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Principal, ApiError> {
        let token = token_from_parts(query, headers)?;
        Ok(self.auth.authenticate(token.as_deref(), unix_now())?)
    }

    /// Authenticates a request for `doc` and checks its access (`edit`: write access needed).
    /// 401 without a valid token, 403 without the access.
    pub fn authorize(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        doc: &str,
        edit: bool,
    ) -> Result<(Principal, Access), ApiError> {
        let principal = self.principal(query, headers)?;
        let needed = if edit { Access::Edit } else { Access::View };
        let granted = principal.require(doc, needed)?;
        Ok((principal, granted))
    }

    /// Identity and access of a WebSocket client for `doc`.
    pub fn peer_info(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        doc: &str,
    ) -> Result<(PeerInfo, Principal), ApiError> {
        let (principal, access) = self.authorize(query, headers, doc, false)?;
        let info = PeerInfo {
            user: principal.user.clone(),
            name: principal.name.clone(),
            role: principal.role.map(|r| r.as_str().to_owned()),
            can_edit: access == Access::Edit,
            ack: false,
            connected_at: SystemTime::now(),
        };
        Ok((info, principal))
    }

    /// Whether `doc` is loaded or was ever stored (here, or in cluster mode in Redis).
    pub async fn document_exists(&self, doc: &str) -> Result<bool, ApiError> {
        if self.registry.loaded(doc).is_some() {
            return Ok(true);
        }
        let store = self.store.clone();
        let name = doc.to_owned();
        let stats = tokio::task::spawn_blocking(move || store.stats(&name))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
        let local = match stats {
            Ok(s) => s.is_some(),
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    e.to_string(),
                ))
            }
        };
        // Cluster mode: a document this node never hosted may live in Redis.
        match self.registry.cluster() {
            Some(cluster) if !local => cluster.document_exists(doc).await.map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cluster_unavailable",
                    format!("cannot tell whether the document exists: {e}"),
                )
            }),
            _ => Ok(local),
        }
    }
}

/// Builds the router (also used by tests through [`Server::start`]).
pub fn app(state: AppState) -> Router {
    let body_limit = state.config.limits.max_message_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/api/docs/{doc}/update",
            get(api::get_doc_update).post(api::post_doc_update),
        )
        .route(
            "/api/weddings/{id}/presence",
            get(crate::presence::presence),
        )
        .route("/api/admin/revoke", post(crate::sessions::revoke))
        .merge(crate::wedding::http::routes())
        .route("/{doc}", get(crate::ws::upgrade))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::body_deadline::enforce,
        ))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(app): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let store = app.store.clone();
    let probe = tokio::task::spawn_blocking(move || store.stats("__readyz_probe__")).await;
    match probe {
        Ok(Ok(_)) if !app.shutdown.is_cancelled() => {
            let mut body =
                serde_json::json!({"status": "ready", "rooms_loaded": app.registry.len()});
            // Cluster mode: still ready while Redis is down (rooms serve this node's clients
            // from the outbox), but say so.
            if let Some(c) = app.registry.cluster() {
                body["cluster"] = serde_json::json!({"node": c.node_id(), "redis_up": c.is_up()});
            }
            Ok(Json(body))
        }
        Ok(Ok(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )),
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept this method",
    )
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    state: AppState,
    serve: JoinHandle<std::io::Result<()>>,
    flusher: Flusher,
    cluster: Option<Arc<Cluster>>,
}

impl Server {
    /// Validates the configuration, opens the sled store in `config.data_dir`, binds
    /// `config.listen` and starts serving.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        let dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || SledStore::open(&dir, STORE_OPEN_DEADLINE))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))??;
        let mut auth = authenticator(&config)?;
        if !auth.is_open() {
            auth = auth.with_revocation_tree(store.open_tree("aux:revocations")?)?;
        }
        Server::start_with(config, Arc::new(store), auth).await
    }

    /// Like [`Server::start`], on a store and authenticator the caller built.
    pub async fn start_with(
        config: Config,
        store: SharedStore,
        auth: Authenticator,
    ) -> Result<Server, ServerError> {
        config.validate()?;
        crate::metrics::install();
        if auth.is_open() {
            warn!("no JWT key configured: open development mode, everyone may edit every document");
        }
        let flusher = Flusher::new(store.clone());
        let cluster = match &config.cluster {
            Some(settings) => Some(Cluster::start(settings).await?),
            None => None,
        };
        let registry = Registry::new(&config, store.clone(), flusher.clone(), cluster.clone());
        if cluster.is_some() {
            drain_outboxes(store.clone(), registry.clone());
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr()?;
        let config_limits = config.limits.clone();
        let state = AppState {
            config: Arc::new(config),
            registry,
            store,
            connections: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            next_conn: Arc::new(AtomicU64::new(1)),
            auth: Arc::new(auth),
            sessions: Arc::new(Sessions::default()),
            conn_limiter: ConnLimiter::new(
                config_limits.max_connections,
                config_limits.max_connections_per_ip,
            ),
            decoder: Arc::new(crate::decode::Decoder::new(&config_limits)),
        };
        let router = app(state.clone());
        let stop = state.shutdown.clone();
        let serve = tokio::spawn(crate::net::serve(
            listener,
            router,
            state.config.limits.clone(),
            state.conn_limiter.clone(),
            stop,
        ));
        info!(%addr, "listening");
        Ok(Server {
            addr,
            state,
            serve,
            flusher,
            cluster,
        })
    }

    /// The address the server is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shared state (for tests that inspect rooms).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops accepting, closes every session with 1001, flushes every room to the store.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        info!("shutting down");
        self.state.shutdown.cancel();
        // After the cancel: a session registering after this sweep sees the cancelled token.
        self.state
            .sessions
            .close_all(crate::protocol::close::GOING_AWAY, "server shutting down");
        self.state.connections.close();
        if tokio::time::timeout(SESSION_DRAIN_TIMEOUT, self.state.connections.wait())
            .await
            .is_err()
        {
            warn!("some sessions did not close in time");
        }
        match self.serve.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "server loop ended with an error"),
            Err(e) => warn!(error = %e, "server task failed"),
        }
        self.state.registry.shutdown().await;
        if let Some(cluster) = &self.cluster {
            cluster.shutdown().await;
        }
        self.flusher.flush().await?;
        // Release the store before returning, so a new server (or `wedsync doc`) can open the
        // data directory at once: wait until every other holder of the shared state (tasks
        // winding down) has dropped it, then drop ours, which closes sled and its file lock.
        let Server { state, flusher, .. } = self;
        drop(flusher);
        let deadline = tokio::time::Instant::now() + STORE_RELEASE_TIMEOUT;
        while (Arc::strong_count(&state.registry) > 1 || Arc::strong_count(&state.auth) > 1)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Then the last store handles outside the shared state: the group-commit driver task
        // keeps one until it has seen that nobody waits for another flush, which is just
        // after it answered the final flush above.
        let auth_held = Arc::strong_count(&state.auth) > 1;
        let store = state.store.clone();
        drop(state);
        while Arc::strong_count(&store) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if auth_held || Arc::strong_count(&store) > 1 {
            warn!(
                "the store is still referenced after shutdown; it closes when the last task ends"
            );
        }
        drop(store);
        info!("shutdown complete");
        Ok(())
    }
}

/// Cluster mode: documents whose local log still holds updates Redis never accepted (the node
/// stopped while Redis was unreachable) are opened at start, so each re-joins and hands its
/// outbox over as soon as Redis answers; their rooms unload once it is empty.
fn drain_outboxes(store: SharedStore, registry: Arc<Registry>) {
    tokio::spawn(async move {
        let listed = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || -> Result<Vec<String>, StoreError> {
                let mut pending = Vec::new();
                for doc in store.list()? {
                    if store.stats(&doc)?.is_some_and(|s| s.log_entries > 0) {
                        pending.push(doc);
                    }
                }
                Ok(pending)
            })
            .await
        };
        match listed {
            Ok(Ok(docs)) => {
                if !docs.is_empty() {
                    info!(documents = docs.len(), "opening documents with an outbox");
                }
                for doc in docs {
                    registry.get(&doc);
                }
            }
            Ok(Err(e)) => warn!(error = %e, "cannot list outboxes"),
            Err(e) => warn!(error = %e, "cannot list outboxes"),
        }
    });
}

/// Builds the authenticator the configuration asks for (open mode without any key).
pub fn authenticator(config: &Config) -> Result<Authenticator, ServerError> {
    let a = &config.auth;
    if a.is_open() {
        return Ok(Authenticator::open());
    }
    let public_key_pem = match &a.jwt_public_key {
        Some(path) => Some(std::fs::read(path).map_err(|source| ServerError::KeyFile {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    Ok(Authenticator::new(&AuthConfig {
        hs256_secret: a.jwt_secret.clone(),
        public_key_pem,
        algorithm: None,
        issuer: a.jwt_issuer.clone(),
        audience: a.jwt_audience.clone(),
        leeway_secs: a
            .jwt_leeway_secs
            .unwrap_or(crate::auth::DEFAULT_LEEWAY_SECS),
    })?)
}
