//! Which upstream a message tries first: routes by sender domain, round-robin
//! within a route, and failing upstreams set aside so a dead region is not
//! dialed first every time.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Config;

/// The first set-aside after a failure; doubles per consecutive failure.
const SET_ASIDE_MIN: Duration = Duration::from_secs(5);
const SET_ASIDE_MAX: Duration = Duration::from_secs(300);

/// One route: the upstreams (indexes into the config's list) sharing its mail.
pub struct Route {
    /// `None` for the default route.
    pub sender_domains: Option<Vec<String>>,
    pub upstreams: Vec<usize>,
    next: AtomicUsize,
}

/// All routes, built once per configuration.
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// With no `[[route]]`, every upstream forms the default route.
    pub fn new(config: &Config) -> Routes {
        let index = |name: &String| config.upstreams.iter().position(|u| &u.name == name);
        let mut routes: Vec<Route> = config
            .routes
            .iter()
            .map(|r| Route {
                sender_domains: r.sender_domains.clone(),
                upstreams: r.upstreams.iter().filter_map(index).collect(),
                next: AtomicUsize::new(0),
            })
            .collect();
        if routes.is_empty() && !config.upstreams.is_empty() {
            routes.push(Route {
                sender_domains: None,
                upstreams: (0..config.upstreams.len()).collect(),
                next: AtomicUsize::new(0),
            });
        }
        Routes { routes }
    }

    /// The route for mail from `domain` (lower case): the route listing it,
    /// else the default route. `None` when there is neither.
    pub fn for_domain(&self, domain: Option<&str>) -> Option<&Route> {
        domain
            .and_then(|d| {
                self.routes.iter().find(|r| {
                    r.sender_domains
                        .as_ref()
                        .is_some_and(|ds| ds.iter().any(|x| x == d))
                })
            })
            .or_else(|| self.routes.iter().find(|r| r.sender_domains.is_none()))
    }
}

impl Route {
    /// The order to try this route's upstreams for one message: round-robin
    /// start, healthy upstreams first, set-aside ones last (still tried, which
    /// is how they are probed back into service).
    pub fn order(&self, health: &Health) -> Vec<usize> {
        let n = self.upstreams.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let rotated = (0..n).map(|i| self.upstreams[(start + i) % n]);
        let now = Instant::now();
        let (up, aside): (Vec<usize>, Vec<usize>) =
            rotated.partition(|&u| !health.is_set_aside(u, now));
        up.into_iter().chain(aside).collect()
    }
}

/// Per-upstream failure state, shared by every delivery.
pub struct Health {
    state: Mutex<Vec<UpstreamHealth>>,
}

#[derive(Clone, Copy, Default)]
struct UpstreamHealth {
    consecutive_failures: u32,
    set_aside_until: Option<Instant>,
}

impl Health {
    pub fn new(upstreams: usize) -> Health {
        Health {
            state: Mutex::new(vec![UpstreamHealth::default(); upstreams]),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Vec<UpstreamHealth>) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn is_set_aside(&self, upstream: usize, now: Instant) -> bool {
        self.with(|s| {
            s.get(upstream)
                .and_then(|h| h.set_aside_until)
                .is_some_and(|until| until > now)
        })
    }

    /// Whether the upstream is currently considered up (for metrics and logs).
    pub fn is_up(&self, upstream: usize) -> bool {
        self.with(|s| s.get(upstream).is_none_or(|h| h.consecutive_failures == 0))
    }

    /// A failed attempt: set aside for 5 s, doubling up to 5 min.
    pub fn failure(&self, upstream: usize) -> Duration {
        self.with(|s| {
            let Some(h) = s.get_mut(upstream) else {
                return Duration::ZERO;
            };
            h.consecutive_failures = h.consecutive_failures.saturating_add(1);
            let aside = SET_ASIDE_MIN
                .saturating_mul(1 << (h.consecutive_failures - 1).min(10))
                .min(SET_ASIDE_MAX);
            h.set_aside_until = Some(Instant::now() + aside);
            aside
        })
    }

    pub fn success(&self, upstream: usize) {
        self.with(|s| {
            if let Some(h) = s.get_mut(upstream) {
                *h = UpstreamHealth::default();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(upstreams: Vec<usize>) -> Route {
        Route {
            sender_domains: None,
            upstreams,
            next: AtomicUsize::new(0),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_with_failing_upstreams_last() {
        let health = Health::new(3);
        let r = route(vec![0, 1, 2]);
        assert_eq!(r.order(&health), [0, 1, 2]);
        assert_eq!(r.order(&health), [1, 2, 0]);
        assert_eq!(health.failure(1), SET_ASIDE_MIN);
        assert_eq!(r.order(&health), [2, 0, 1]);
        assert_eq!(r.order(&health), [0, 2, 1], "set aside: tried last");
        assert_eq!(health.failure(1), SET_ASIDE_MIN * 2);
        tokio::time::advance(SET_ASIDE_MIN * 2 + Duration::from_millis(1)).await;
        assert_eq!(
            r.order(&health),
            [1, 2, 0],
            "back in rotation after its interval"
        );
        health.success(1);
        assert!(health.is_up(1));
    }

    #[test]
    fn routes_by_sender_domain_with_a_default() {
        let text = "[[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n[queue]\npath = \"q\"\n\
            [[upstream]]\nname = \"eu\"\naddress = \"eu.example:25\"\ntls = \"none\"\n\
            [[upstream]]\nname = \"us\"\naddress = \"us.example:25\"\ntls = \"none\"\n\
            [[route]]\nsender_domains = [\"tenant-a.example\"]\nupstreams = [\"eu\"]\n\
            [[route]]\nupstreams = [\"us\", \"eu\"]\n";
        let config = Config::parse(text, std::path::Path::new("/x.toml")).unwrap();
        let routes = Routes::new(&config);
        assert_eq!(
            routes
                .for_domain(Some("tenant-a.example"))
                .unwrap()
                .upstreams,
            [0]
        );
        assert_eq!(
            routes.for_domain(Some("other.example")).unwrap().upstreams,
            [1, 0]
        );
        assert_eq!(routes.for_domain(None).unwrap().upstreams, [1, 0]);
    }
}
