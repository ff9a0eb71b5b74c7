//! The `cors` pre-match middleware (§8.3): option parsing, origin matching, preflight answers
//! and response decoration, as pure functions over hyper headers.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};

const DEFAULT_ORIGINS: &str = "*";
const DEFAULT_METHODS: &str = "GET,POST,PUT,DELETE,OPTIONS,PATCH";
const DEFAULT_HEADERS: &str = "Origin,Content-Type,Accept,Authorization,X-Requested-With";
const DEFAULT_MAX_AGE: u64 = 86400;

const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    Any,
    /// Lower-cased `scheme://host[:port]`.
    Exact(String),
    /// `*.example.com` ⇒ suffix `.example.com` matched against `host[:port]`; a scheme given in
    /// the pattern (`https://*.example.com`) must match too, otherwise http and https both do.
    Subdomain {
        scheme: Option<String>,
        suffix: String,
    },
    /// `http(s)://localhost[:port]`.
    Localhost,
}

/// Parsed once per router from its `options` map.
#[derive(Debug, Clone)]
pub struct CorsConfig {
    origins: Vec<OriginRule>,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: Option<HeaderValue>,
    allow_credentials: bool,
    max_age: HeaderValue,
    allow_private_network: bool,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self::from_options(&BTreeMap::new())
    }
}

impl CorsConfig {
    /// `cors.*` keys first, legacy underscore keys second, then the §8.3 defaults. An empty value
    /// counts as unset (option values are coerced to strings, so a YAML null arrives as `""`).
    pub fn from_options(opts: &BTreeMap<String, String>) -> Self {
        let origins = option(opts, "cors.allow.origins", "allow_origins")
            .unwrap_or(DEFAULT_ORIGINS)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(parse_rule)
            .collect();
        let allow_methods =
            header_option(opts, "cors.allow.methods", "allow_methods", DEFAULT_METHODS);
        let allow_headers =
            header_option(opts, "cors.allow.headers", "allow_headers", DEFAULT_HEADERS);
        let expose_headers = option(opts, "cors.expose.headers", "expose_headers").and_then(|v| {
            HeaderValue::from_str(v)
                .map_err(|_| tracing::warn!(value = v, "cors: ignoring invalid expose headers"))
                .ok()
        });
        let allow_credentials = bool_option(opts, "cors.allow.credentials", "allow_credentials");
        let allow_private_network =
            bool_option(opts, "cors.allow.private.network", "allow_private_network");
        let max_age = match option(opts, "cors.max.age", "max_age") {
            None => DEFAULT_MAX_AGE,
            Some(v) => v.parse::<u64>().unwrap_or_else(|_| {
                tracing::warn!(
                    value = v,
                    "cors: max age is not a number of seconds, using default"
                );
                DEFAULT_MAX_AGE
            }),
        };
        Self {
            origins,
            allow_methods,
            allow_headers,
            expose_headers,
            allow_credentials,
            max_age: HeaderValue::from(max_age),
            allow_private_network,
        }
    }

    /// Whether a request's `Origin` value is on the allow list.
    pub fn allows_origin(&self, origin: &str) -> bool {
        let Some(parsed) = ParsedOrigin::parse(origin) else {
            // Still allowed by `*`, so opaque origins such as `null` behave as with Wippy.
            return self.origins.contains(&OriginRule::Any) && !origin.trim().is_empty();
        };
        self.origins.iter().any(|rule| parsed.matches(rule))
    }

    /// The request's `Origin`, when present and allowed.
    fn allowed_origin<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let value = headers.get(header::ORIGIN)?;
        let origin = value.to_str().ok()?;
        self.allows_origin(origin).then_some(value)
    }

    /// Preflight (OPTIONS + Origin + Access-Control-Request-Method) from an allowed origin ⇒
    /// `Some(204 response)`, which ends the chain. Anything else ⇒ `None` (pass through).
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Response<Full<Bytes>>> {
        if method != Method::OPTIONS || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let origin = self.allowed_origin(headers)?;
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        // Echoed even for `*`, so the answer stays valid when credentials are enabled (§11 row 34).
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            self.allow_headers.clone(),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        self.add_flags(h);
        h.insert(header::VARY, HeaderValue::from_static(PREFLIGHT_VARY));
        Some(resp)
    }

    /// Adds the non-preflight CORS headers to a response when the request's Origin is allowed;
    /// otherwise leaves the response untouched.
    pub fn decorate(&self, req_headers: &HeaderMap, resp_headers: &mut HeaderMap) {
        let Some(origin) = self.allowed_origin(req_headers) else {
            return;
        };
        resp_headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if let Some(expose) = &self.expose_headers {
            resp_headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
        self.add_flags(resp_headers);
        // Appended, not replaced: the handler may already vary on other headers.
        if !varies_on_origin(resp_headers) {
            resp_headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }

    fn add_flags(&self, h: &mut HeaderMap) {
        if self.allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if self.allow_private_network {
            h.insert(
                "access-control-allow-private-network",
                HeaderValue::from_static("true"),
            );
        }
    }
}

fn option<'a>(opts: &'a BTreeMap<String, String>, key: &str, legacy: &str) -> Option<&'a str> {
    [key, legacy]
        .into_iter()
        .filter_map(|k| opts.get(k))
        .map(|v| v.trim())
        .find(|v| !v.is_empty())
}

fn header_option(
    opts: &BTreeMap<String, String>,
    key: &str,
    legacy: &str,
    default: &'static str,
) -> HeaderValue {
    match option(opts, key, legacy) {
        None => HeaderValue::from_static(default),
        Some(v) => HeaderValue::from_str(v).unwrap_or_else(|_| {
            tracing::warn!(
                option = key,
                value = v,
                "cors: invalid header value, using default"
            );
            HeaderValue::from_static(default)
        }),
    }
}

fn bool_option(opts: &BTreeMap<String, String>, key: &str, legacy: &str) -> bool {
    match option(opts, key, legacy)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None => false,
        Some("true" | "1" | "yes" | "on") => true,
        Some("false" | "0" | "no" | "off") => false,
        Some(other) => {
            tracing::warn!(
                option = key,
                value = other,
                "cors: not a boolean, using false"
            );
            false
        }
    }
}

fn parse_rule(pattern: &str) -> OriginRule {
    let p = pattern.trim_end_matches('/').to_ascii_lowercase();
    if p == "*" {
        return OriginRule::Any;
    }
    if p == "localhost" {
        return OriginRule::Localhost;
    }
    let (scheme, rest) = match p.split_once("://") {
        Some((s, r)) => (Some(s.to_string()), r),
        None => (None, p.as_str()),
    };
    if let Some(suffix) = rest.strip_prefix("*.") {
        return OriginRule::Subdomain {
            scheme,
            suffix: format!(".{suffix}"),
        };
    }
    OriginRule::Exact(p)
}

fn varies_on_origin(h: &HeaderMap) -> bool {
    h.get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.eq_ignore_ascii_case("origin"))
}

/// An `Origin` value split into parts; `None` for opaque (`null`) or malformed values.
struct ParsedOrigin {
    /// The whole value, lower-cased.
    full: String,
    scheme: String,
    /// `host[:port]`.
    authority: String,
    host: String,
}

impl ParsedOrigin {
    fn parse(origin: &str) -> Option<Self> {
        let full = origin.trim().to_ascii_lowercase();
        let (scheme, authority) = full.split_once("://")?;
        if scheme.is_empty()
            || authority.is_empty()
            || authority.contains(['/', '@', '?', '#', ' '])
        {
            return None;
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (inner, after) = v6.split_once(']')?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            (format!("[{inner}]"), port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        // A valid port keeps `:` out of the host part, which the suffix and localhost
        // matches rely on.
        if host.is_empty()
            || port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        Some(Self {
            scheme: scheme.to_string(),
            authority: authority.to_string(),
            host,
            full,
        })
    }

    fn is_web(&self) -> bool {
        self.scheme == "http" || self.scheme == "https"
    }

    fn matches(&self, rule: &OriginRule) -> bool {
        match rule {
            OriginRule::Any => true,
            OriginRule::Exact(o) => *o == self.full,
            OriginRule::Localhost => self.is_web() && self.host == "localhost",
            OriginRule::Subdomain { scheme, suffix } => {
                let scheme_ok = match scheme {
                    Some(s) => *s == self.scheme,
                    None => self.is_web(),
                };
                // The suffix starts with `.`, so `evilexample.com` cannot match and the bare
                // apex `example.com` is excluded (subdomains only).
                // Matching on `host[:port]` means a port-less pattern only admits port-less
                // origins, and `*.x.io:3000` pins the port.
                scheme_ok
                    && self.authority.len() > suffix.len()
                    && self.authority.ends_with(suffix.as_str())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> CorsConfig {
        CorsConfig::from_options(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn req(origin: Option<&str>, acrm: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        if let Some(m) = acrm {
            h.insert(
                header::ACCESS_CONTROL_REQUEST_METHOD,
                HeaderValue::from_str(m).unwrap(),
            );
        }
        h
    }

    fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        h.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn preflight_default_star_echoes_origin() {
        let c = CorsConfig::default();
        let r = c
            .preflight(
                &Method::OPTIONS,
                &req(Some("https://app.example.com"), Some("POST")),
            )
            .expect("preflight answered");
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let h = r.headers();
        assert_eq!(
            get(h, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            get(h, "access-control-allow-methods"),
            Some(DEFAULT_METHODS)
        );
        assert_eq!(
            get(h, "access-control-allow-headers"),
            Some(DEFAULT_HEADERS)
        );
        assert_eq!(get(h, "access-control-max-age"), Some("86400"));
        assert_eq!(get(h, "vary"), Some(PREFLIGHT_VARY));
        assert!(get(h, "access-control-allow-credentials").is_none());
        assert!(get(h, "access-control-allow-private-network").is_none());
    }

    #[test]
    fn preflight_not_answered() {
        let c = cfg(&[("cors.allow.origins", "https://good.com")]);
        // Disallowed origin.
        assert!(c
            .preflight(
                &Method::OPTIONS,
                &req(Some("https://evil.com"), Some("POST"))
            )
            .is_none());
        // No origin.
        assert!(c
            .preflight(&Method::OPTIONS, &req(None, Some("POST")))
            .is_none());
        // Not a preflight: no Access-Control-Request-Method, or not OPTIONS.
        assert!(c
            .preflight(&Method::OPTIONS, &req(Some("https://good.com"), None))
            .is_none());
        assert!(c
            .preflight(&Method::POST, &req(Some("https://good.com"), Some("POST")))
            .is_none());
        assert!(c
            .preflight(
                &Method::OPTIONS,
                &req(Some("https://good.com"), Some("POST"))
            )
            .is_some());
    }

    #[test]
    fn decorate_allowed_and_not() {
        let c = cfg(&[
            ("cors.allow.origins", "https://good.com"),
            ("cors.expose.headers", "X-Total, X-Page"),
        ]);
        let mut resp = HeaderMap::new();
        c.decorate(&req(Some("https://good.com"), None), &mut resp);
        assert_eq!(
            get(&resp, "access-control-allow-origin"),
            Some("https://good.com")
        );
        assert_eq!(
            get(&resp, "access-control-expose-headers"),
            Some("X-Total, X-Page")
        );
        assert_eq!(get(&resp, "vary"), Some("Origin"));
        assert!(get(&resp, "access-control-allow-methods").is_none());

        for origin in [Some("https://evil.com"), None] {
            let mut resp = HeaderMap::new();
            resp.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            c.decorate(&req(origin, None), &mut resp);
            assert_eq!(resp.len(), 1, "{origin:?}");
        }
    }

    #[test]
    fn decorate_keeps_existing_vary() {
        let c = CorsConfig::default();
        let mut resp = HeaderMap::new();
        resp.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        c.decorate(&req(Some("http://a.com"), None), &mut resp);
        let vary: Vec<_> = resp.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"]);

        let mut resp = HeaderMap::new();
        resp.insert(header::VARY, HeaderValue::from_static("origin, accept"));
        c.decorate(&req(Some("http://a.com"), None), &mut resp);
        assert_eq!(resp.get_all(header::VARY).iter().count(), 1);
    }

    #[test]
    fn decorate_replaces_handler_allow_origin() {
        let c = CorsConfig::default();
        let mut resp = HeaderMap::new();
        resp.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        c.decorate(&req(Some("http://a.com"), None), &mut resp);
        assert_eq!(
            get(&resp, "access-control-allow-origin"),
            Some("http://a.com")
        );
        assert_eq!(
            resp.get_all(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .iter()
                .count(),
            1
        );
    }

    #[test]
    fn exact_origins_list() {
        let c = cfg(&[(
            "cors.allow.origins",
            "https://a.com, http://b.com:8080 ,HTTPS://C.COM/",
        )]);
        assert!(c.allows_origin("https://a.com"));
        assert!(c.allows_origin("http://b.com:8080"));
        assert!(c.allows_origin("https://c.com"));
        assert!(c.allows_origin("https://A.com"));
        assert!(!c.allows_origin("http://a.com"));
        assert!(!c.allows_origin("https://a.com:443"));
        assert!(!c.allows_origin("http://b.com"));
        assert!(!c.allows_origin("https://a.com.evil.com"));
        assert!(!c.allows_origin("null"));
        assert!(!c.allows_origin(""));
    }

    #[test]
    fn subdomain_globs() {
        let c = cfg(&[("cors.allow.origins", "*.example.com")]);
        assert!(c.allows_origin("https://app.example.com"));
        assert!(c.allows_origin("http://a.b.example.com"));
        assert!(!c.allows_origin("https://example.com"));
        assert!(!c.allows_origin("https://evilexample.com"));
        assert!(!c.allows_origin("https://example.com.evil.com"));
        assert!(!c.allows_origin("https://app.example.com:8443"));
        assert!(!c.allows_origin("ftp://app.example.com"));
        assert!(!c.allows_origin("https://.example.com"));

        let c = cfg(&[("cors.allow.origins", "https://*.example.com, *.dev.io:3000")]);
        assert!(c.allows_origin("https://app.example.com"));
        assert!(!c.allows_origin("http://app.example.com"));
        assert!(c.allows_origin("http://x.dev.io:3000"));
        assert!(!c.allows_origin("http://x.dev.io"));
        assert!(!c.allows_origin("http://x.dev.io:3001"));
    }

    #[test]
    fn localhost_any_port() {
        let c = cfg(&[("cors.allow.origins", "localhost")]);
        assert!(c.allows_origin("http://localhost"));
        assert!(c.allows_origin("https://localhost"));
        assert!(c.allows_origin("http://localhost:5173"));
        assert!(c.allows_origin("https://LOCALHOST:8443"));
        assert!(!c.allows_origin("http://localhost.evil.com"));
        assert!(!c.allows_origin("http://evil-localhost"));
        assert!(!c.allows_origin("http://localhost:"));
        assert!(!c.allows_origin("http://localhost:abc"));
        assert!(!c.allows_origin("ws://localhost"));
        assert!(!c.allows_origin("http://127.0.0.1:5173"));
    }

    #[test]
    fn star_allows_everything_including_opaque() {
        let c = cfg(&[("cors.allow.origins", "*")]);
        assert!(c.allows_origin("https://anything.net"));
        assert!(c.allows_origin("null"));
        assert!(c.allows_origin("http://[::1]:8080"));
        assert!(!c.allows_origin(""));
    }

    #[test]
    fn mixed_list() {
        let c = cfg(&[(
            "cors.allow.origins",
            "localhost,https://prod.com,*.staging.io",
        )]);
        assert!(c.allows_origin("http://localhost:3000"));
        assert!(c.allows_origin("https://prod.com"));
        assert!(c.allows_origin("https://pr-1.staging.io"));
        assert!(!c.allows_origin("https://other.com"));
    }

    #[test]
    fn credentials_and_private_network() {
        let c = cfg(&[
            ("cors.allow.origins", "*"),
            ("cors.allow.credentials", "true"),
            ("cors.allow.private.network", "TRUE"),
        ]);
        let r = c
            .preflight(&Method::OPTIONS, &req(Some("https://x.io"), Some("GET")))
            .unwrap();
        let h = r.headers();
        assert_eq!(get(h, "access-control-allow-origin"), Some("https://x.io"));
        assert_eq!(get(h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(get(h, "access-control-allow-private-network"), Some("true"));

        let mut resp = HeaderMap::new();
        c.decorate(&req(Some("https://x.io"), None), &mut resp);
        assert_eq!(
            get(&resp, "access-control-allow-origin"),
            Some("https://x.io")
        );
        assert_eq!(get(&resp, "access-control-allow-credentials"), Some("true"));
        assert_eq!(
            get(&resp, "access-control-allow-private-network"),
            Some("true")
        );
        assert!(get(&resp, "access-control-expose-headers").is_none());
    }

    #[test]
    fn custom_methods_headers_max_age() {
        let c = cfg(&[
            ("cors.allow.methods", "GET,POST"),
            ("cors.allow.headers", "X-Custom"),
            ("cors.max.age", "600"),
        ]);
        let r = c
            .preflight(&Method::OPTIONS, &req(Some("https://x.io"), Some("GET")))
            .unwrap();
        let h = r.headers();
        assert_eq!(get(h, "access-control-allow-methods"), Some("GET,POST"));
        assert_eq!(get(h, "access-control-allow-headers"), Some("X-Custom"));
        assert_eq!(get(h, "access-control-max-age"), Some("600"));
    }

    #[test]
    fn legacy_keys() {
        let c = cfg(&[
            ("allow_origins", "https://legacy.com"),
            ("allow_methods", "GET"),
            ("allow_headers", "X-Old"),
            ("expose_headers", "X-Exp"),
            ("allow_credentials", "true"),
            ("max_age", "60"),
            ("allow_private_network", "1"),
        ]);
        assert!(c.allows_origin("https://legacy.com"));
        assert!(!c.allows_origin("https://other.com"));
        let r = c
            .preflight(
                &Method::OPTIONS,
                &req(Some("https://legacy.com"), Some("GET")),
            )
            .unwrap();
        let h = r.headers();
        assert_eq!(get(h, "access-control-allow-methods"), Some("GET"));
        assert_eq!(get(h, "access-control-allow-headers"), Some("X-Old"));
        assert_eq!(get(h, "access-control-max-age"), Some("60"));
        assert_eq!(get(h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(get(h, "access-control-allow-private-network"), Some("true"));
        let mut resp = HeaderMap::new();
        c.decorate(&req(Some("https://legacy.com"), None), &mut resp);
        assert_eq!(get(&resp, "access-control-expose-headers"), Some("X-Exp"));
    }

    #[test]
    fn new_keys_win_over_legacy() {
        let c = cfg(&[
            ("cors.allow.origins", "https://new.com"),
            ("allow_origins", "https://legacy.com"),
            ("cors.allow.credentials", "false"),
            ("allow_credentials", "true"),
        ]);
        assert!(c.allows_origin("https://new.com"));
        assert!(!c.allows_origin("https://legacy.com"));
        assert!(!c.allow_credentials);
    }

    #[test]
    fn empty_or_invalid_values_fall_back() {
        let c = cfg(&[
            ("cors.allow.origins", ""),
            ("cors.max.age", "forever"),
            ("cors.allow.credentials", "maybe"),
            ("cors.allow.methods", "GET\nX"),
        ]);
        assert!(c.allows_origin("https://any.com"));
        assert_eq!(c.max_age, HeaderValue::from(86400u64));
        assert!(!c.allow_credentials);
        assert_eq!(c.allow_methods, DEFAULT_METHODS);
        assert!(c.expose_headers.is_none());
    }

    #[test]
    fn non_ascii_origin_ignored() {
        let c = CorsConfig::default();
        let mut h = HeaderMap::new();
        h.insert(
            header::ORIGIN,
            HeaderValue::from_bytes(b"https://\xff.com").unwrap(),
        );
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("GET"),
        );
        assert!(c.preflight(&Method::OPTIONS, &h).is_none());
        let mut resp = HeaderMap::new();
        c.decorate(&h, &mut resp);
        assert!(resp.is_empty());
    }
}
