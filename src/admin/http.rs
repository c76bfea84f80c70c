//! The admin HTTP endpoint (axum): routes, the bearer-token check, and the
//! security headers every response carries.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::messages::{self, Filter};
use super::page;
use crate::config::Config;
use crate::context::ServerContext;

/// The admin socket and the token its requests must carry.
pub struct Bound {
    listener: TcpListener,
    token: Option<Vec<u8>>,
}

impl Bound {
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// Binds `[admin] address` and reads the token; `None` without `[admin]`.
pub async fn bind(config: &Config) -> Result<Option<Bound>, String> {
    let Some(admin) = &config.admin else {
        return Ok(None);
    };
    let token = match &admin.token_file {
        Some(path) => Some(super::read_token(path)?),
        None => None,
    };
    let listener = TcpListener::bind(admin.address)
        .await
        .map_err(|e| format!("cannot listen on [admin] address {}: {e}", admin.address))?;
    Ok(Some(Bound { listener, token }))
}

#[derive(Clone)]
struct AppState {
    current: watch::Receiver<Arc<ServerContext>>,
    token: Option<Arc<[u8]>>,
    shutdown: CancellationToken,
}

impl AppState {
    fn ctx(&self) -> Arc<ServerContext> {
        self.current.borrow().clone()
    }
}

/// Serves until the runtime ends: it keeps answering (`/healthz` with 503)
/// while the SMTP side drains after `shutdown`.
pub async fn serve(
    bound: Bound,
    current: watch::Receiver<Arc<ServerContext>>,
    shutdown: CancellationToken,
) {
    let state = AppState {
        current,
        token: bound.token.map(Into::into),
        shutdown,
    };
    let guarded = Router::new()
        .route("/", get(index))
        .route("/message/{id}", get(message_page))
        .route("/metrics", get(metrics))
        .route("/api/messages", get(api_messages))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let app = Router::new()
        .route("/healthz", get(healthz))
        .merge(guarded)
        .layer(middleware::from_fn(security_headers))
        .with_state(state);
    if let Ok(addr) = bound.listener.local_addr() {
        info!(address = %addr, "admin HTTP listening");
    }
    if let Err(e) = axum::serve(bound.listener, app).await {
        error!("admin HTTP stopped: {e}");
    }
}

/// Every page is built from attacker-controlled strings: even if escaping
/// missed one, the browser runs no script and loads nothing.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    // Constant time in the token's content (its length may show).
    if bool::from(presented.ct_eq(token)) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a bearer token is required\n",
    )
        .into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let ctx = state.ctx();
    let spool = ctx.spool.clone();
    // Listing the spool is blocking file-system work.
    let queued = tokio::task::spawn_blocking(move || spool.list().unwrap_or_default())
        .await
        .unwrap_or_default();
    let m = &ctx.telemetry.metrics;
    m.queue_messages.set(queued.len() as i64);
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    // Queue ids begin with their creation time in microseconds (13 hex digits).
    let oldest = queued
        .iter()
        .filter_map(|id| u64::from_str_radix(id.get(..13)?, 16).ok())
        .min()
        .map_or(0.0, |t| now_us.saturating_sub(t) as f64 / 1e6);
    m.oldest_queued_age.set(oldest);
    m.upstream_up.clear();
    for (i, name) in ctx.delivery.upstream_names().enumerate() {
        let up = ctx.delivery.health.is_up(i);
        m.upstream_up
            .get_or_create(&crate::telemetry::metrics::label("upstream", name))
            .set(i64::from(up));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

/// Recent and queued messages matching the filter, newest first.
async fn list(state: &AppState, filter: Filter) -> Vec<messages::Message> {
    let ctx = state.ctx();
    tokio::task::spawn_blocking(move || messages::list(&ctx.telemetry.recent, &ctx.spool, &filter))
        .await
        .unwrap_or_default()
}

async fn api_messages(State(state): State<AppState>, Query(filter): Query<Filter>) -> Response {
    let list = list(&state, filter).await;
    match serde_json::to_string(&list) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn upstreams(ctx: &ServerContext) -> Vec<(String, bool)> {
    ctx.delivery
        .upstream_names()
        .enumerate()
        .map(|(i, n)| (n.to_owned(), ctx.delivery.health.is_up(i)))
        .collect()
}

fn html(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

async fn index(State(state): State<AppState>, Query(filter): Query<Filter>) -> Response {
    let list = list(&state, filter.clone()).await;
    let ctx = state.ctx();
    html(page::index(
        &ctx.config.hostname,
        &upstreams(&ctx),
        &list,
        &filter,
    ))
}

async fn message_page(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let ctx = state.ctx();
    // Queue ids are hex: anything else cannot name a spool file.
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return (StatusCode::NOT_FOUND, "no such message\n").into_response();
    }
    let found = {
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || messages::find(&ctx.telemetry.recent, &ctx.spool, &id))
            .await
            .ok()
            .flatten()
    };
    match found {
        Some(m) => html(page::message(&ctx.config.hostname, &upstreams(&ctx), &m)),
        None => (StatusCode::NOT_FOUND, "no such message\n").into_response(),
    }
}
