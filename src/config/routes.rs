//! `[[route]]`: which upstreams carry mail from which sender domains.

use toml::Spanned;

use super::raw::RawRoute;
use super::source::Source;
use super::{ConfigError, UpstreamConfig, lowercase_all};

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// `None` marks the default route.
    pub sender_domains: Option<Vec<String>>,
    pub upstreams: Vec<String>,
}

/// Every route names configured upstreams; at most one default route.
pub(super) fn validate(
    src: &Source,
    raw: Vec<Spanned<RawRoute>>,
    upstreams: &[UpstreamConfig],
) -> Result<Vec<RouteConfig>, ConfigError> {
    let mut routes: Vec<RouteConfig> = Vec::new();
    for r in raw {
        let line = src.line(r.span().start);
        let r = r.into_inner();
        if let Some(missing) = r
            .upstreams
            .iter()
            .find(|n| !upstreams.iter().any(|u| &u.name == *n))
        {
            return Err(src.error(
                line,
                "route.upstreams",
                format!("route names upstream {missing:?}, which no [[upstream]] defines"),
                "use the name of a configured [[upstream]]",
            ));
        }
        if r.upstreams.is_empty() {
            return Err(src.error(
                line,
                "route.upstreams",
                "a route without upstreams",
                "list at least one upstream name",
            ));
        }
        if r.sender_domains.is_none() && routes.iter().any(|o| o.sender_domains.is_none()) {
            return Err(src.error(
                line,
                "route.sender_domains",
                "two default routes (routes without sender_domains)",
                "give all routes but one a sender_domains list",
            ));
        }
        routes.push(RouteConfig {
            sender_domains: r.sender_domains.map(lowercase_all),
            upstreams: r.upstreams,
        });
    }
    Ok(routes)
}
