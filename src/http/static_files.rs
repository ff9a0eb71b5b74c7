//! `http.static` file serving: path confinement, MIME types, conditional GET, byte ranges and SPA
//! fallback, as a pure function from a request's parts to a hyper response.
//!
//! Files are read whole into memory (or the requested range of them). That keeps the body type a
//! plain `Full<Bytes>`; it is fine for web assets but a mount holding multi-hundred-MiB files
//! (anything past ~64 MiB) would want a streaming body instead.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};
use percent_encoding::percent_decode_str;

/// One mounted directory. Cheap to share behind an `Arc`; holds no open handles.
#[derive(Debug, Clone)]
pub struct StaticSite {
    /// Canonical, so every resolved file can be checked with a plain prefix test.
    root: PathBuf,
    spa: bool,
    index: String,
    cache_control: Option<HeaderValue>,
    /// Small files by request path, so a hot file is served without a trip to the blocking
    /// pool; an entry is trusted for `REVALIDATE`, then checked against the disk again.
    cache: Arc<Mutex<HashMap<String, Arc<Cached>>>>,
}

/// Files up to this size are kept in memory after the first request.
const CACHE_FILE_MAX: u64 = 1 << 20;
const CACHE_ENTRIES_MAX: usize = 1024;
/// How stale a cached file may be: edits show up within this long.
const REVALIDATE: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Cached {
    content_type: &'static str,
    bytes: Bytes,
    mtime: Option<SystemTime>,
    checked: std::time::Instant,
    // Validators are formatted once per (re)load rather than on every hit.
    etag: String,
    etag_value: HeaderValue,
    last_modified: Option<HeaderValue>,
}

impl StaticSite {
    /// Fails when `root` does not exist or cannot be canonicalized. An unusable
    /// `cache_control` value is dropped with a warning rather than failing the mount.
    pub fn new(
        root: PathBuf,
        spa: bool,
        index: String,
        cache_control: Option<String>,
    ) -> std::io::Result<Self> {
        let root = fs::canonicalize(&root)?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        let cache_control = cache_control
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .and_then(|v| match HeaderValue::from_str(&v) {
                Ok(h) => Some(h),
                Err(_) => {
                    tracing::warn!(value = %v, "static: ignoring invalid Cache-Control value");
                    None
                }
            });
        let index = if index.trim().is_empty() {
            "index.html".to_string()
        } else {
            index
        };
        Ok(Self {
            root,
            spa,
            index,
            cache_control,
            cache: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `rel` = the request path with the mount prefix removed (still percent-encoded).
    pub async fn serve(
        &self,
        method: &Method,
        rel: &str,
        headers: &HeaderMap,
    ) -> Response<Full<Bytes>> {
        let head = match *method {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                let mut resp = json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                return resp;
            }
        };
        let Some(segments) = sanitize(rel) else {
            // Syntactic traversal attempts get a plain 404 even in SPA mode: it says nothing
            // about what exists on disk.
            return json_error(StatusCode::NOT_FOUND, "not found");
        };
        let cond = Conditions::from_headers(headers);
        let key = segments.join("/");
        let hit = self
            .cache
            .lock()
            .expect("static cache lock")
            .get(&key)
            .filter(|c| c.checked.elapsed() < REVALIDATE)
            .cloned();
        if let Some(c) = hit {
            return self.respond(&c, head, &cond);
        }
        let site = self.clone();
        match tokio::task::spawn_blocking(move || {
            let resp = site.serve_blocking(&segments, head, &cond);
            site.remember(&key, &segments);
            resp
        })
        .await
        {
            Ok(resp) => resp,
            Err(e) => {
                tracing::error!(error = %e, "static: file task failed");
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }

    fn serve_blocking(
        &self,
        segments: &[String],
        head: bool,
        cond: &Conditions,
    ) -> Response<Full<Bytes>> {
        let mut candidate = self.root.clone();
        candidate.extend(segments);
        let (path, force_html) = match self.resolve(&candidate) {
            Some(p) => (p, false),
            None if self.spa => match self.confined_file(&self.root.join(&self.index)) {
                Some(p) => (p, true),
                None => {
                    tracing::error!(root = %self.root.display(), index = %self.index, "static: SPA index file missing");
                    return json_error(StatusCode::INTERNAL_SERVER_ERROR, "index file not found");
                }
            },
            None => return json_error(StatusCode::NOT_FOUND, "not found"),
        };
        let content_type = if force_html {
            "text/html; charset=utf-8"
        } else {
            content_type_for(&path)
        };
        match self.send_file(&path, content_type, head, cond) {
            Ok(resp) => resp,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                json_error(StatusCode::NOT_FOUND, "not found")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "static: read failed");
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }

    /// Caches the file behind `segments` when it is small (runs on the blocking pool).
    fn remember(&self, key: &str, segments: &[String]) {
        let mut candidate = self.root.clone();
        candidate.extend(segments);
        let (path, force_html) = match self.resolve(&candidate) {
            Some(p) => (p, false),
            None if self.spa => match self.confined_file(&self.root.join(&self.index)) {
                Some(p) => (p, true),
                None => return,
            },
            None => return,
        };
        let Ok(meta) = fs::metadata(&path) else {
            return;
        };
        if meta.len() > CACHE_FILE_MAX {
            return;
        }
        let Ok(bytes) = fs::read(&path) else { return };
        let content_type = if force_html {
            "text/html; charset=utf-8"
        } else {
            content_type_for(&path)
        };
        let mtime = meta.modified().ok();
        let etag = make_etag(bytes.len() as u64, mtime);
        let Ok(etag_value) = HeaderValue::from_str(&etag) else {
            return;
        };
        let last_modified = mtime
            .map(httpdate::fmt_http_date)
            .and_then(|d| HeaderValue::from_str(&d).ok());
        let mut cache = self.cache.lock().expect("static cache lock");
        if cache.len() >= CACHE_ENTRIES_MAX {
            cache.clear();
        }
        cache.insert(
            key.to_string(),
            Arc::new(Cached {
                content_type,
                bytes: Bytes::from(bytes),
                mtime,
                checked: std::time::Instant::now(),
                etag,
                etag_value,
                last_modified,
            }),
        );
    }

    /// The answer for a file already in memory: validators, conditions, Range, HEAD.
    fn respond(&self, c: &Cached, head: bool, cond: &Conditions) -> Response<Full<Bytes>> {
        let len = c.bytes.len() as u64;
        let validators = Validators {
            etag: &c.etag,
            etag_value: &c.etag_value,
            mtime: c.mtime,
            last_modified: c.last_modified.as_ref(),
        };
        match self.plan(&validators, c.content_type, len, cond) {
            Plan::Answer(resp) => resp,
            Plan::Send {
                head: h,
                status,
                start,
                count,
            } => {
                let body = if head {
                    Bytes::new()
                } else {
                    c.bytes.slice(start as usize..(start + count) as usize)
                };
                finish_range(h, status, start, count, len, body)
            }
        }
    }

    /// Headers every answer for the file carries, then the conditional and Range decisions:
    /// either a finished answer (304, 416) or the byte range to send with its status.
    fn plan(
        &self,
        v: &Validators<'_>,
        content_type: &'static str,
        len: u64,
        cond: &Conditions,
    ) -> Plan {
        // Filled in place: `http::response::Builder` re-validates every name and value, which
        // showed up in profiles of the hot static path.
        let mut h = HeaderMap::with_capacity(8);
        h.insert(header::ETAG, v.etag_value.clone());
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if let Some(lm) = v.last_modified {
            h.insert(header::LAST_MODIFIED, lm.clone());
        }
        if let Some(cc) = &self.cache_control {
            h.insert(header::CACHE_CONTROL, cc.clone());
        }
        if cond.not_modified(v.etag, v.mtime) {
            return Plan::Answer(with_headers(StatusCode::NOT_MODIFIED, h, Bytes::new()));
        }
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        let range = match &cond.range {
            Some(r) if cond.if_range_matches(v.etag, v.mtime) => parse_range(r, len),
            _ => RangeSpec::Full,
        };
        match range {
            RangeSpec::Full => Plan::Send {
                head: h,
                status: StatusCode::OK,
                start: 0,
                count: len,
            },
            RangeSpec::Partial { start, end } => Plan::Send {
                head: h,
                status: StatusCode::PARTIAL_CONTENT,
                start,
                count: end - start + 1,
            },
            RangeSpec::Unsatisfiable => {
                h.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{len}")).expect("digits are valid"),
                );
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
                Plan::Answer(with_headers(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    h,
                    Bytes::new(),
                ))
            }
        }
    }

    /// An existing regular file, or a directory's index file, confined to the root.
    fn resolve(&self, candidate: &Path) -> Option<PathBuf> {
        let canonical = self.confined(candidate)?;
        let meta = fs::metadata(&canonical).ok()?;
        if meta.is_file() {
            Some(canonical)
        } else if meta.is_dir() {
            // Never a listing (§11 row 32): the index or nothing.
            self.confined_file(&canonical.join(&self.index))
        } else {
            // FIFOs, sockets, devices: opening them could block or leak, so they do not exist.
            None
        }
    }

    fn confined_file(&self, candidate: &Path) -> Option<PathBuf> {
        let canonical = self.confined(candidate)?;
        fs::metadata(&canonical)
            .ok()
            .filter(|m| m.is_file())
            .map(|_| canonical)
    }

    /// Canonicalizing resolves every symlink, so a link inside the root pointing outside
    /// it fails the prefix test here.
    fn confined(&self, candidate: &Path) -> Option<PathBuf> {
        let canonical = fs::canonicalize(candidate).ok()?;
        canonical.starts_with(&self.root).then_some(canonical)
    }

    fn send_file(
        &self,
        path: &Path,
        content_type: &'static str,
        head: bool,
        cond: &Conditions,
    ) -> std::io::Result<Response<Full<Bytes>>> {
        let mut file = File::open(path)?;
        // Metadata from the open handle, so validators describe the bytes actually sent.
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::ErrorKind::NotFound.into());
        }
        let len = meta.len();
        let mtime = meta.modified().ok();
        let etag = make_etag(len, mtime);
        let etag_value = HeaderValue::from_str(&etag).expect("etags are ASCII");
        let last_modified =
            mtime.and_then(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m)).ok());
        let validators = Validators {
            etag: &etag,
            etag_value: &etag_value,
            mtime,
            last_modified: last_modified.as_ref(),
        };
        let (h, status, start, count) = match self.plan(&validators, content_type, len, cond) {
            Plan::Answer(resp) => return Ok(resp),
            Plan::Send {
                head,
                status,
                start,
                count,
            } => (head, status, start, count),
        };
        let body = if head {
            Bytes::new()
        } else {
            if start > 0 {
                file.seek(SeekFrom::Start(start))?;
            }
            let mut buf = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
            file.take(count).read_to_end(&mut buf)?;
            Bytes::from(buf)
        };
        // A file that shrank since `metadata` yields fewer bytes; the headers must describe
        // what is actually sent, or hyper would hang the connection on a short body.
        let sent = if head { count } else { body.len() as u64 };
        Ok(finish_range(h, status, start, sent, len, body))
    }
}

/// A file's validators, borrowed from the cache or made for one read from disk.
struct Validators<'a> {
    etag: &'a str,
    etag_value: &'a HeaderValue,
    mtime: Option<SystemTime>,
    last_modified: Option<&'a HeaderValue>,
}

enum Plan {
    Answer(Response<Full<Bytes>>),
    Send {
        head: HeaderMap,
        status: StatusCode,
        start: u64,
        count: u64,
    },
}

fn with_headers(status: StatusCode, h: HeaderMap, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    *r.headers_mut() = h;
    r
}

/// Adds the length (and for 206 the range) of `count` bytes from `start` of `len`.
fn finish_range(
    mut h: HeaderMap,
    status: StatusCode,
    start: u64,
    count: u64,
    len: u64,
    body: Bytes,
) -> Response<Full<Bytes>> {
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if status == StatusCode::PARTIAL_CONTENT {
        let last = (start + count).saturating_sub(1);
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{last}/{len}"))
                .expect("digits are valid"),
        );
    }
    with_headers(status, h, body)
}

/// Percent-decodes `rel` and splits it into safe path segments. `None` for anything that
/// could step outside the root or confuse the filesystem: `..` in any encoding,
/// backslashes, NUL, invalid UTF-8.
fn sanitize(rel: &str) -> Option<Vec<String>> {
    // Callers may hand over a path-and-query; the query never names a file.
    let raw = rel.split(['?', '#']).next().unwrap_or("");
    if raw.contains('\\') {
        return None;
    }
    let decoded = percent_decode_str(raw).decode_utf8().ok()?;
    if decoded.contains('\\') || decoded.contains('\0') {
        return None;
    }
    let mut segments = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => continue,
            ".." => return None,
            s => segments.push(s.to_string()),
        }
    }
    Some(segments)
}

/// Validators and range copied out of the request, so they can move to the blocking pool.
#[derive(Debug, Default)]
struct Conditions {
    if_none_match: Option<String>,
    if_modified_since: Option<SystemTime>,
    range: Option<String>,
    if_range: Option<String>,
}

impl Conditions {
    fn from_headers(h: &HeaderMap) -> Self {
        let joined = |name: header::HeaderName| -> Option<String> {
            let parts: Vec<&str> = h
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!parts.is_empty()).then(|| parts.join(","))
        };
        let single = |name: header::HeaderName| -> Option<String> {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_string())
        };
        Self {
            if_none_match: joined(header::IF_NONE_MATCH),
            if_modified_since: single(header::IF_MODIFIED_SINCE)
                .and_then(|s| httpdate::parse_http_date(&s).ok()),
            range: single(header::RANGE),
            if_range: single(header::IF_RANGE),
        }
    }

    /// RFC 9110 §13.2.2: If-None-Match, when present, overrides If-Modified-Since.
    fn not_modified(&self, etag: &str, mtime: Option<SystemTime>) -> bool {
        if let Some(inm) = &self.if_none_match {
            return inm
                .split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || (!tag.is_empty() && strip_weak(tag) == strip_weak(etag)));
        }
        match (self.if_modified_since, mtime) {
            (Some(since), Some(m)) => unix_secs(m) <= unix_secs(since),
            _ => false,
        }
    }

    /// No If-Range, or one naming the current representation (strong comparison for tags,
    /// exact second for dates); otherwise the Range is ignored and the whole file sent.
    fn if_range_matches(&self, etag: &str, mtime: Option<SystemTime>) -> bool {
        let Some(ir) = &self.if_range else {
            return true;
        };
        if ir.starts_with('"') || ir.starts_with("W/") {
            return !ir.starts_with("W/") && ir == etag;
        }
        match (httpdate::parse_http_date(ir), mtime) {
            (Ok(date), Some(m)) => unix_secs(date) == unix_secs(m),
            _ => false,
        }
    }
}

fn strip_weak(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Strong tag from size and nanosecond mtime: any rewrite that changes either changes it.
fn make_etag(len: u64, mtime: Option<SystemTime>) -> String {
    let nanos = mtime
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("\"{len:x}-{nanos:x}\"")
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    Full,
    /// Inclusive byte positions, already clamped to the file.
    Partial {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// A single `bytes=` range. Syntactically invalid headers and multi-range requests are
/// ignored (the whole file is sent), which RFC 9110 §14.2 permits.
fn parse_range(value: &str, len: u64) -> RangeSpec {
    let Some((unit, spec)) = value.split_once('=') else {
        return RangeSpec::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeSpec::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if first.is_empty() {
        if !digits(last) {
            return RangeSpec::Full;
        }
        let Ok(suffix) = last.parse::<u64>() else {
            return RangeSpec::Full;
        };
        if suffix == 0 || len == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Partial {
            start: len.saturating_sub(suffix),
            end: len - 1,
        };
    }
    if !digits(first) || !(last.is_empty() || digits(last)) {
        return RangeSpec::Full;
    }
    let Ok(start) = first.parse::<u64>() else {
        return RangeSpec::Full;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        // A last-byte-pos too large for u64 is still "to the end of the file".
        last.parse::<u64>().unwrap_or(u64::MAX)
    };
    if end < start {
        return RangeSpec::Full;
    }
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Partial {
        start,
        end: end.min(len - 1),
    }
}

fn content_type_for(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" | "cjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "xml" => "application/xml",
        "txt" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "bmp" => "image/bmp",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

fn json_error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": msg }).to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(Full::new(Bytes::from(body)))
        .expect("static headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::Duration;

    struct Fixture {
        // Held so the directories outlive the test.
        _outer: tempfile::TempDir,
        root: PathBuf,
    }

    /// `<outer>/secret.txt` outside the root, `<outer>/www` as the root.
    fn fixture() -> Fixture {
        let outer = tempfile::tempdir().unwrap();
        fs::write(outer.path().join("secret.txt"), "TOP SECRET").unwrap();
        let root = outer.path().join("www");
        fs::create_dir_all(root.join("assets")).unwrap();
        fs::create_dir_all(root.join("docs")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::write(root.join("index.html"), "<h1>home</h1>").unwrap();
        fs::write(root.join("docs/index.html"), "<h1>docs</h1>").unwrap();
        fs::write(root.join("app.js"), "console.log(1)").unwrap();
        fs::write(root.join("mod.mjs"), "export {}").unwrap();
        fs::write(root.join("style.css"), "body{}").unwrap();
        fs::write(root.join("data.json"), "{}").unwrap();
        fs::write(root.join("logo.svg"), "<svg/>").unwrap();
        fs::write(root.join("img.PNG"), [0x89, b'P', b'N', b'G']).unwrap();
        fs::write(root.join("photo.jpeg"), [0xff, 0xd8]).unwrap();
        fs::write(root.join("mod.wasm"), [0, b'a', b's', b'm']).unwrap();
        fs::write(root.join("font.woff2"), [1]).unwrap();
        fs::write(root.join("app.js.map"), "{}").unwrap();
        fs::write(root.join("blob.bin"), [1, 2, 3]).unwrap();
        fs::write(root.join("noext"), "x").unwrap();
        fs::write(root.join("digits.txt"), "0123456789").unwrap();
        fs::write(root.join("hello world.txt"), "spaced").unwrap();
        fs::write(root.join("assets/a.css"), "a{}").unwrap();
        Fixture {
            _outer: outer,
            root,
        }
    }

    fn site(f: &Fixture, spa: bool) -> StaticSite {
        StaticSite::new(f.root.clone(), spa, "index.html".into(), None).unwrap()
    }

    async fn get(s: &StaticSite, rel: &str) -> Response<Full<Bytes>> {
        s.serve(&Method::GET, rel, &HeaderMap::new()).await
    }

    async fn get_with(s: &StaticSite, rel: &str, hs: &[(&str, &str)]) -> Response<Full<Bytes>> {
        let mut h = HeaderMap::new();
        for (k, v) in hs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        s.serve(&Method::GET, rel, &h).await
    }

    async fn body(r: Response<Full<Bytes>>) -> Bytes {
        r.into_body().collect().await.unwrap().to_bytes()
    }

    fn hdr<'a>(r: &'a Response<Full<Bytes>>, name: &str) -> Option<&'a str> {
        r.headers().get(name).map(|v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn content_types_by_extension() {
        let f = fixture();
        let s = site(&f, false);
        let cases = [
            ("/index.html", "text/html; charset=utf-8"),
            ("/app.js", "text/javascript; charset=utf-8"),
            ("/mod.mjs", "text/javascript; charset=utf-8"),
            ("/style.css", "text/css; charset=utf-8"),
            ("/data.json", "application/json"),
            ("/logo.svg", "image/svg+xml"),
            ("/img.PNG", "image/png"),
            ("/photo.jpeg", "image/jpeg"),
            ("/mod.wasm", "application/wasm"),
            ("/font.woff2", "font/woff2"),
            ("/app.js.map", "application/json"),
            ("/digits.txt", "text/plain; charset=utf-8"),
            ("/blob.bin", "application/octet-stream"),
            ("/noext", "application/octet-stream"),
            ("/assets/a.css", "text/css; charset=utf-8"),
        ];
        for (path, ct) in cases {
            let r = get(&s, path).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(hdr(&r, "content-type"), Some(ct), "{path}");
            assert_eq!(hdr(&r, "x-content-type-options"), Some("nosniff"));
        }
    }

    #[tokio::test]
    async fn serves_body_with_validators() {
        let f = fixture();
        let s = site(&f, false);
        let r = get(&s, "/app.js").await;
        assert_eq!(hdr(&r, "content-length"), Some("14"));
        assert!(hdr(&r, "etag").unwrap().starts_with('"'));
        let lm = hdr(&r, "last-modified").unwrap();
        assert!(httpdate::parse_http_date(lm).is_ok());
        assert_eq!(hdr(&r, "accept-ranges"), Some("bytes"));
        assert!(hdr(&r, "cache-control").is_none());
        assert_eq!(body(r).await, "console.log(1)");
    }

    #[tokio::test]
    async fn percent_decoding_and_query() {
        let f = fixture();
        let s = site(&f, false);
        let r = get(&s, "/hello%20world.txt").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, "spaced");
        let r = get(&s, "/app.js?v=3").await;
        assert_eq!(body(r).await, "console.log(1)");
        let r = get(&s, "//assets/./a.css").await;
        assert_eq!(body(r).await, "a{}");
        // Mount-relative path without a leading slash (prefix stripped exactly).
        let r = get(&s, "app.js").await;
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn cache_control_applied() {
        let f = fixture();
        let s = StaticSite::new(
            f.root.clone(),
            false,
            "index.html".into(),
            Some("public, max-age=3600".into()),
        )
        .unwrap();
        let r = get(&s, "/style.css").await;
        assert_eq!(hdr(&r, "cache-control"), Some("public, max-age=3600"));
        let etag = hdr(&r, "etag").unwrap().to_string();
        let r = get_with(&s, "/style.css", &[("if-none-match", &etag)]).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(hdr(&r, "cache-control"), Some("public, max-age=3600"));
    }

    #[tokio::test]
    async fn directory_index_and_no_listing() {
        let f = fixture();
        let s = site(&f, false);
        for p in ["", "/", "/docs", "/docs/"] {
            let r = get(&s, p).await;
            assert_eq!(r.status(), StatusCode::OK, "{p:?}");
            assert_eq!(hdr(&r, "content-type"), Some("text/html; charset=utf-8"));
        }
        assert_eq!(body(get(&s, "/").await).await, "<h1>home</h1>");
        assert_eq!(body(get(&s, "/docs/").await).await, "<h1>docs</h1>");
        for p in ["/assets", "/assets/", "/empty/"] {
            let r = get(&s, p).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{p}");
            assert_eq!(hdr(&r, "content-type"), Some("application/json"));
            assert_eq!(body(r).await, r#"{"error":"not found"}"#);
        }
        assert_eq!(get(&s, "/missing.js").await.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn custom_index_name() {
        let f = fixture();
        fs::write(f.root.join("assets/main.htm"), "main").unwrap();
        let s = StaticSite::new(f.root.clone(), false, "main.htm".into(), None).unwrap();
        let r = get(&s, "/assets/").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, "main");
        assert_eq!(get(&s, "/").await.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn spa_fallback() {
        let f = fixture();
        let s = site(&f, true);
        for p in [
            "/dashboard",
            "/deep/link/route",
            "/missing.js",
            "/assets/",
            "/empty",
        ] {
            let r = get(&s, p).await;
            assert_eq!(r.status(), StatusCode::OK, "{p}");
            assert_eq!(hdr(&r, "content-type"), Some("text/html; charset=utf-8"));
            assert_eq!(body(r).await, "<h1>home</h1>", "{p}");
        }
        // Real files and directory indexes still win.
        let r = get(&s, "/app.js").await;
        assert_eq!(
            hdr(&r, "content-type"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(body(get(&s, "/docs").await).await, "<h1>docs</h1>");
    }

    #[tokio::test]
    async fn spa_index_missing_is_500() {
        let f = fixture();
        let s = StaticSite::new(f.root.clone(), true, "nope.html".into(), None).unwrap();
        let r = get(&s, "/route").await;
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(hdr(&r, "content-type"), Some("application/json"));
        assert!(String::from_utf8(body(r).await.to_vec())
            .unwrap()
            .contains("error"));
        // Existing files are unaffected.
        assert_eq!(get(&s, "/app.js").await.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn spa_index_that_is_html_with_other_extension_forced_html() {
        let f = fixture();
        fs::write(f.root.join("shell.tpl"), "<p>shell</p>").unwrap();
        let s = StaticSite::new(f.root.clone(), true, "shell.tpl".into(), None).unwrap();
        let r = get(&s, "/anything").await;
        assert_eq!(hdr(&r, "content-type"), Some("text/html; charset=utf-8"));
    }

    #[tokio::test]
    async fn if_none_match_304() {
        let f = fixture();
        let s = site(&f, false);
        let r = get(&s, "/app.js").await;
        let etag = hdr(&r, "etag").unwrap().to_string();
        let lm = hdr(&r, "last-modified").unwrap().to_string();

        let r = get_with(&s, "/app.js", &[("if-none-match", &etag)]).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(hdr(&r, "etag"), Some(etag.as_str()));
        assert_eq!(hdr(&r, "last-modified"), Some(lm.as_str()));
        assert!(hdr(&r, "content-length").is_none());
        assert!(body(r).await.is_empty());

        let weak_list = format!("\"other\", W/{etag}");
        let r = get_with(&s, "/app.js", &[("if-none-match", &weak_list)]).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        let r = get_with(&s, "/app.js", &[("if-none-match", "*")]).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

        let r = get_with(&s, "/app.js", &[("if-none-match", "\"stale\"")]).await;
        assert_eq!(r.status(), StatusCode::OK);
        // If-None-Match takes precedence over a matching If-Modified-Since.
        let r = get_with(
            &s,
            "/app.js",
            &[("if-none-match", "\"stale\""), ("if-modified-since", &lm)],
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, "console.log(1)");
    }

    #[tokio::test]
    async fn if_modified_since_304() {
        let f = fixture();
        let s = site(&f, false);
        let lm = hdr(&get(&s, "/app.js").await, "last-modified")
            .unwrap()
            .to_string();
        let r = get_with(&s, "/app.js", &[("if-modified-since", &lm)]).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert!(body(r).await.is_empty());

        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
        let r = get_with(&s, "/app.js", &[("if-modified-since", &future)]).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

        let old = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(1_000_000));
        let r = get_with(&s, "/app.js", &[("if-modified-since", &old)]).await;
        assert_eq!(r.status(), StatusCode::OK);

        let r = get_with(&s, "/app.js", &[("if-modified-since", "garbage")]).await;
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn etag_changes_when_file_changes() {
        let f = fixture();
        let s = site(&f, false);
        let e1 = hdr(&get(&s, "/digits.txt").await, "etag")
            .unwrap()
            .to_string();
        fs::write(f.root.join("digits.txt"), "0123456789abc").unwrap();
        // Within REVALIDATE the cached copy may still answer; after it, the new file must.
        let cached = hdr(&get(&s, "/digits.txt").await, "etag")
            .unwrap()
            .to_string();
        assert_eq!(cached, e1, "served from the in-memory copy");
        tokio::time::sleep(REVALIDATE + std::time::Duration::from_millis(50)).await;
        let e2 = hdr(&get(&s, "/digits.txt").await, "etag")
            .unwrap()
            .to_string();
        assert_ne!(e1, e2);
        let r = get_with(&s, "/digits.txt", &[("if-none-match", &e1)]).await;
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn byte_ranges() {
        let f = fixture();
        let s = site(&f, false);
        let cases = [
            ("bytes=0-3", "0123", "bytes 0-3/10"),
            ("bytes=2-", "23456789", "bytes 2-9/10"),
            ("bytes=-3", "789", "bytes 7-9/10"),
            ("bytes=5-100", "56789", "bytes 5-9/10"),
            ("bytes=-50", "0123456789", "bytes 0-9/10"),
            ("bytes=9-9", "9", "bytes 9-9/10"),
        ];
        for (range, want, cr) in cases {
            let r = get_with(&s, "/digits.txt", &[("range", range)]).await;
            assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
            assert_eq!(hdr(&r, "content-range"), Some(cr), "{range}");
            assert_eq!(
                hdr(&r, "content-length"),
                Some(want.len().to_string().as_str())
            );
            assert_eq!(hdr(&r, "content-type"), Some("text/plain; charset=utf-8"));
            assert_eq!(body(r).await, want, "{range}");
        }
        for range in ["bytes=10-", "bytes=20-30", "bytes=-0"] {
            let r = get_with(&s, "/digits.txt", &[("range", range)]).await;
            assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
            assert_eq!(hdr(&r, "content-range"), Some("bytes */10"));
            assert!(body(r).await.is_empty());
        }
        // Multi-range, bad syntax and other units fall back to the whole file.
        for range in [
            "bytes=0-1,3-4",
            "bytes=5-2",
            "bytes=abc",
            "items=0-1",
            "bytes=-",
        ] {
            let r = get_with(&s, "/digits.txt", &[("range", range)]).await;
            assert_eq!(r.status(), StatusCode::OK, "{range}");
            assert_eq!(body(r).await, "0123456789");
        }
    }

    #[tokio::test]
    async fn if_range() {
        let f = fixture();
        let s = site(&f, false);
        let r = get(&s, "/digits.txt").await;
        let etag = hdr(&r, "etag").unwrap().to_string();
        let lm = hdr(&r, "last-modified").unwrap().to_string();
        let r = get_with(
            &s,
            "/digits.txt",
            &[("range", "bytes=0-1"), ("if-range", &etag)],
        )
        .await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        let r = get_with(
            &s,
            "/digits.txt",
            &[("range", "bytes=0-1"), ("if-range", &lm)],
        )
        .await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        let r = get_with(
            &s,
            "/digits.txt",
            &[("range", "bytes=0-1"), ("if-range", "\"old\"")],
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        let weak = format!("W/{etag}");
        let r = get_with(
            &s,
            "/digits.txt",
            &[("range", "bytes=0-1"), ("if-range", &weak)],
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn empty_file() {
        let f = fixture();
        fs::write(f.root.join("empty.txt"), "").unwrap();
        let s = site(&f, false);
        let r = get(&s, "/empty.txt").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(hdr(&r, "content-length"), Some("0"));
        let r = get_with(&s, "/empty.txt", &[("range", "bytes=0-")]).await;
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    }

    #[tokio::test]
    async fn head_has_headers_no_body() {
        let f = fixture();
        let s = site(&f, false);
        let r = s
            .serve(&Method::HEAD, "/digits.txt", &HeaderMap::new())
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(hdr(&r, "content-length"), Some("10"));
        assert_eq!(hdr(&r, "content-type"), Some("text/plain; charset=utf-8"));
        assert!(hdr(&r, "etag").is_some());
        assert!(body(r).await.is_empty());

        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=2-5"));
        let r = s.serve(&Method::HEAD, "/digits.txt", &h).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(hdr(&r, "content-length"), Some("4"));
        assert!(body(r).await.is_empty());

        let r = s.serve(&Method::HEAD, "/nope", &HeaderMap::new()).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn other_methods_405() {
        let f = fixture();
        let s = site(&f, true);
        for m in [
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
            Method::PATCH,
        ] {
            let r = s.serve(&m, "/app.js", &HeaderMap::new()).await;
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{m}");
            assert_eq!(hdr(&r, "allow"), Some("GET, HEAD"));
            assert_eq!(hdr(&r, "content-type"), Some("application/json"));
            assert_eq!(body(r).await, r#"{"error":"method not allowed"}"#);
        }
    }

    const TRAVERSALS: &[&str] = &[
        "/../secret.txt",
        "/../etc/passwd",
        "/../../../../../../etc/passwd",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/..%2fsecret.txt",
        "/..%2Fsecret.txt",
        "/.%2e/secret.txt",
        "/foo/../../secret.txt",
        "/assets/../../secret.txt",
        "/assets/%2e%2e/%2e%2e/secret.txt",
        "\\..\\secret.txt",
        "/..\\secret.txt",
        "/%5c..%5csecret.txt",
        "/app.js%00.html",
        "/%00",
        "/%ff%fe",
        "..",
        "/..",
        "/../",
    ];

    #[tokio::test]
    async fn traversal_rejected_with_404() {
        let f = fixture();
        for spa in [false, true] {
            let s = site(&f, spa);
            for p in TRAVERSALS {
                let r = get(&s, p).await;
                assert_eq!(r.status(), StatusCode::NOT_FOUND, "{p} spa={spa}");
                let b = body(r).await;
                assert!(!String::from_utf8_lossy(&b).contains("SECRET"), "{p}");
            }
        }
    }

    #[tokio::test]
    async fn dotdot_inside_a_name_is_fine() {
        let f = fixture();
        fs::write(f.root.join("a..b.txt"), "dots").unwrap();
        let s = site(&f, false);
        let r = get(&s, "/a..b.txt").await;
        assert_eq!(r.status(), StatusCode::OK);
        // Double encoding decodes once to a literal (nonexistent) name, not to `..`.
        assert_eq!(
            get(&s, "/%252e%252e/secret.txt").await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn symlink_escape_rejected() {
        let f = fixture();
        let outer = f.root.parent().unwrap().to_path_buf();
        std::os::unix::fs::symlink(outer.join("secret.txt"), f.root.join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(&outer, f.root.join("up")).unwrap();
        std::os::unix::fs::symlink(f.root.join("app.js"), f.root.join("alias.js")).unwrap();
        let s = site(&f, false);
        for p in ["/leak.txt", "/up/secret.txt", "/up/", "/up"] {
            let r = get(&s, p).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{p}");
            assert!(!String::from_utf8_lossy(&body(r).await).contains("SECRET"));
        }
        // A symlink that stays inside the root is served.
        let r = get(&s, "/alias.js").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, "console.log(1)");

        // SPA mode never hands out the outside file either.
        let s = site(&f, true);
        let r = get(&s, "/leak.txt").await;
        assert_eq!(body(r).await, "<h1>home</h1>");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn symlinked_root_is_canonicalized() {
        let f = fixture();
        let link = f.root.parent().unwrap().join("www-link");
        std::os::unix::fs::symlink(&f.root, &link).unwrap();
        let s = StaticSite::new(link, false, "index.html".into(), None).unwrap();
        assert_eq!(s.root(), fs::canonicalize(&f.root).unwrap());
        assert_eq!(get(&s, "/app.js").await.status(), StatusCode::OK);
    }

    #[test]
    fn new_rejects_missing_root_and_files() {
        let f = fixture();
        assert!(StaticSite::new(f.root.join("nope"), false, "index.html".into(), None).is_err());
        assert!(StaticSite::new(f.root.join("app.js"), false, "index.html".into(), None).is_err());
    }

    /// One raw HTTP/1.1 exchange through a real hyper connection, to check what reaches the
    /// wire: HEAD keeps our Content-Length, 304 carries no length, and hyper's debug
    /// assertions on Content-Length never fire.
    async fn wire(s: StaticSite, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        let resp = s.serve(req.method(), req.uri().path(), req.headers()).await;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await
                .unwrap();
        });
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        server.await.unwrap();
        String::from_utf8(out).unwrap().to_ascii_lowercase()
    }

    #[tokio::test]
    async fn on_the_wire() {
        let f = fixture();
        let s = site(&f, false);
        let close = "host: x\r\nconnection: close\r\n";

        let r = wire(
            s.clone(),
            &format!("HEAD /digits.txt HTTP/1.1\r\n{close}\r\n"),
        )
        .await;
        assert!(r.starts_with("http/1.1 200"), "{r}");
        assert!(r.contains("content-length: 10\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "HEAD must have no body: {r}");

        let r = wire(
            s.clone(),
            &format!("GET /digits.txt HTTP/1.1\r\n{close}range: bytes=1-2\r\n\r\n"),
        )
        .await;
        assert!(r.starts_with("http/1.1 206"), "{r}");
        assert!(r.contains("content-length: 2\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n12"), "{r}");

        let etag = hdr(&get(&s, "/digits.txt").await, "etag")
            .unwrap()
            .to_string();
        let r = wire(
            s.clone(),
            &format!("GET /digits.txt HTTP/1.1\r\n{close}if-none-match: {etag}\r\n\r\n"),
        )
        .await;
        assert!(r.starts_with("http/1.1 304"), "{r}");
        assert!(!r.contains("content-length"), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "{r}");

        let r = wire(s, &format!("GET /../secret.txt HTTP/1.1\r\n{close}\r\n")).await;
        assert!(r.starts_with("http/1.1 404"), "{r}");
        assert!(!r.contains("secret"), "{r}");
    }

    #[test]
    fn sanitize_segments() {
        assert_eq!(sanitize("/a/./b//c").unwrap(), ["a", "b", "c"]);
        assert_eq!(sanitize("").unwrap(), Vec::<String>::new());
        assert_eq!(sanitize("/a%2Fb").unwrap(), ["a", "b"]);
        assert!(sanitize("/a/../b").is_none());
        assert!(sanitize("/a%2f..%2fb").is_none());
    }
}
