//! The route table of one `http.service`: endpoints and static mounts from its routers, the
//! middleware chain each route runs under, and most-specific-match lookup (§8.1).

use crate::http::middleware::api_auth::ApiAuth;
use crate::http::middleware::cors::CorsConfig;
use crate::http::middleware::token_auth::TokenAuth;
use crate::http::static_files::StaticSite;
use crate::registry::kinds::EntryId;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Middleware a route runs under, resolved from its router's names and options.
#[derive(Default, Clone)]
pub struct Chain {
    pub router: Option<EntryId>,
    pub cors: Option<CorsConfig>,
    pub token_auth: Option<TokenAuth>,
    pub api_auth: Option<ApiAuth>,
    pub ws_relay: Option<WsRelayOptions>,
    /// `metrics` listed: requests on this route are counted and timed (`crate::metrics`).
    pub metrics: bool,
}

#[derive(Debug, Clone)]
pub struct WsRelayOptions {
    /// `None` = same-origin only.
    pub allowed_origins: Option<Vec<String>>,
}

impl WsRelayOptions {
    pub fn from_options(opts: &BTreeMap<String, String>) -> Self {
        let raw = [
            "wsrelay.allowed.origins",
            "allow_origins",
            "allowed_origins",
        ]
        .iter()
        .find_map(|k| opts.get(*k));
        WsRelayOptions {
            allowed_origins: raw.map(|r| {
                r.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

pub enum Target {
    Endpoint {
        entry: EntryId,
        func: EntryId,
    },
    Static {
        site: Arc<StaticSite>,
    },
    /// The automatic OPTIONS route of an endpoint: 204 after the pre-match middleware.
    Options,
}

pub struct Route {
    /// `None` for static mounts (GET and HEAD).
    method: Option<String>,
    segments: Vec<Segment>,
    /// Static mounts match their whole subtree.
    subtree: bool,
    pub target: Target,
    pub chain: Arc<Chain>,
    /// `POST /auth/token`: the route's metrics label too, hence shared rather than copied.
    pub pattern: Arc<str>,
}

pub enum Match<'a> {
    Found {
        route: &'a Route,
        params: Vec<(String, String)>,
        /// For static mounts: the path below the mount point.
        rest: String,
    },
    MethodNotAllowed,
    NotFound,
}

#[derive(Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

fn parse_pattern(path: &str) -> Vec<Segment> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            if let Some(inner) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                match inner.strip_suffix("...") {
                    Some(name) => Segment::Rest(name.to_string()),
                    None => Segment::Param(inner.to_string()),
                }
            } else {
                Segment::Literal(s.to_string())
            }
        })
        .collect()
}

impl Route {
    fn specificity(&self) -> (u8, usize, usize) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        let endpoint = u8::from(!matches!(self.target, Target::Static { .. }));
        (endpoint, literals, self.segments.len())
    }

    fn match_path(&self, parts: &[&str]) -> Option<(Vec<(String, String)>, String)> {
        let mut params = Vec::new();
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Rest(_) => return Some((params, parts[i.min(parts.len())..].join("/"))),
                Segment::Literal(l) => {
                    if parts.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let v = parts.get(i)?;
                    params.push((
                        name.clone(),
                        percent_encoding::percent_decode_str(v)
                            .decode_utf8_lossy()
                            .into_owned(),
                    ));
                }
            }
        }
        if parts.len() == self.segments.len() {
            Some((params, String::new()))
        } else if self.subtree && parts.len() > self.segments.len() {
            Some((params, parts[self.segments.len()..].join("/")))
        } else {
            None
        }
    }

    fn accepts(&self, method: &str) -> bool {
        match &self.method {
            None => method == "GET" || method == "HEAD",
            Some(m) => m == method || (m == "GET" && method == "HEAD"),
        }
    }
}

impl RouteTable {
    /// Adds an endpoint and its automatic OPTIONS route. An equal-specificity duplicate is
    /// rejected (returns the conflicting pattern).
    pub fn add_endpoint(
        &mut self,
        method: &str,
        path: &str,
        entry: EntryId,
        func: EntryId,
        chain: Arc<Chain>,
    ) -> Result<(), String> {
        let segments = parse_pattern(path);
        if self
            .routes
            .iter()
            .any(|r| r.method.as_deref() == Some(method) && r.segments == segments)
        {
            return Err(format!("{method} {path} is already routed"));
        }
        if method != "OPTIONS"
            && !self
                .routes
                .iter()
                .any(|r| r.method.as_deref() == Some("OPTIONS") && r.segments == segments)
        {
            self.routes.push(Route {
                method: Some("OPTIONS".into()),
                segments: segments.clone(),
                subtree: false,
                target: Target::Options,
                chain: chain.clone(),
                pattern: format!("OPTIONS {path}").into(),
            });
        }
        self.routes.push(Route {
            method: Some(method.to_string()),
            segments,
            subtree: false,
            target: Target::Endpoint { entry, func },
            chain,
            pattern: format!("{method} {path}").into(),
        });
        Ok(())
    }

    pub fn add_static(&mut self, path: &str, site: Arc<StaticSite>, chain: Arc<Chain>) {
        self.routes.push(Route {
            method: None,
            segments: parse_pattern(path),
            subtree: true,
            target: Target::Static { site },
            chain,
            pattern: format!("GET {path}").into(),
        });
    }

    pub fn find(&self, method: &str, path: &str) -> Match<'_> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        type Candidate<'r> = (&'r Route, Vec<(String, String)>, String);
        let mut best: Option<Candidate<'_>> = None;
        let mut path_matched = false;
        for route in &self.routes {
            let Some((params, rest)) = route.match_path(&parts) else {
                continue;
            };
            path_matched = true;
            if !route.accepts(method) {
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|(b, _, _)| route.specificity() > b.specificity())
            {
                best = Some((route, params, rest));
            }
        }
        match best {
            Some((route, params, rest)) => Match::Found {
                route,
                params,
                rest,
            },
            None if path_matched => Match::MethodNotAllowed,
            None => Match::NotFound,
        }
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let mut t = RouteTable::default();
        let chain = Arc::new(Chain::default());
        let id = |n: &str| EntryId::new("app", n);
        t.add_endpoint("POST", "/auth/token", id("e1"), id("f1"), chain.clone())
            .unwrap();
        t.add_endpoint("GET", "/ws/ticker", id("e2"), id("f2"), chain.clone())
            .unwrap();
        t.add_endpoint("GET", "/api/alerts/{id}", id("e3"), id("f3"), chain.clone())
            .unwrap();
        t.add_endpoint(
            "GET",
            "/api/alerts/latest",
            id("e4"),
            id("f4"),
            chain.clone(),
        )
        .unwrap();
        t.add_endpoint("GET", "/files/{rest...}", id("e5"), id("f5"), chain.clone())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let site =
            StaticSite::new(dir.path().to_path_buf(), true, "index.html".into(), None).unwrap();
        t.add_static("/", Arc::new(site), chain);
        t
    }

    fn endpoint(m: Match<'_>) -> Option<(String, Vec<(String, String)>)> {
        match m {
            Match::Found { route, params, .. } => match &route.target {
                Target::Endpoint { entry, .. } => Some((entry.name.clone(), params)),
                _ => Some(("static-or-options".into(), params)),
            },
            _ => None,
        }
    }

    #[test]
    fn endpoints_beat_the_spa_and_literals_beat_params() {
        let t = table();
        assert_eq!(endpoint(t.find("POST", "/auth/token")).unwrap().0, "e1");
        assert_eq!(endpoint(t.find("GET", "/ws/ticker")).unwrap().0, "e2");
        assert_eq!(
            endpoint(t.find("GET", "/api/alerts/latest")).unwrap().0,
            "e4"
        );
        let (name, params) = endpoint(t.find("GET", "/api/alerts/7")).unwrap();
        assert_eq!(
            (name.as_str(), params),
            ("e3", vec![("id".into(), "7".into())])
        );
        assert_eq!(endpoint(t.find("GET", "/files/a/b")).unwrap().0, "e5");
        assert_eq!(
            endpoint(t.find("GET", "/some/page")).unwrap().0,
            "static-or-options"
        );
        assert_eq!(endpoint(t.find("HEAD", "/ws/ticker")).unwrap().0, "e2");
    }

    #[test]
    fn options_routes_and_405() {
        let t = table();
        assert_eq!(
            endpoint(t.find("OPTIONS", "/auth/token")).unwrap().0,
            "static-or-options"
        );
        assert!(matches!(
            t.find("DELETE", "/auth/token"),
            Match::MethodNotAllowed
        ));
        let mut bare = RouteTable::default();
        let chain = Arc::new(Chain::default());
        bare.add_endpoint(
            "GET",
            "/x",
            EntryId::new("a", "b"),
            EntryId::new("a", "c"),
            chain,
        )
        .unwrap();
        assert!(matches!(bare.find("GET", "/y"), Match::NotFound));
    }

    #[test]
    fn duplicate_routes_are_rejected() {
        let mut t = table();
        let chain = Arc::new(Chain::default());
        assert!(t
            .add_endpoint(
                "POST",
                "/auth/token",
                EntryId::new("a", "b"),
                EntryId::new("a", "c"),
                chain
            )
            .is_err());
    }
}
