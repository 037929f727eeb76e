//! The HTTP app: `/redirect` answers each client's boot script, every other path is a plain
//! file of the tree (never `once/` or `static/`).

use std::fmt::Write as _;
use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use actix_files::NamedFile;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use ipnet::IpNet;
use tracing::{debug, error, info, warn};

use crate::boottree::{BootTree, Resolved, Rule, Slot};
use crate::config::{ForwardedHeader, MacBootstrap, ServerConfig};
use crate::identity::{normalize_ip, ClientId, MacAddr};
use crate::process::{self, Argv};
use crate::script;

/// Longest request target accepted (as nginx's default large_client_header_buffers).
const MAX_URL: usize = 8 << 10;
/// Longest single header, and all headers together.
const MAX_HEADER: usize = 8 << 10;
const MAX_HEADERS_TOTAL: usize = 32 << 10;

/// Scripts up to this size are read, rebased and answered from memory; larger answers stream.
const SCRIPT_MAX: u64 = 1 << 20;

/// What every handler shares.
pub struct AppState {
    pub tree: Arc<BootTree>,
    pub cfg: Arc<ServerConfig>,
    cache: AnswerCache,
}

impl AppState {
    pub fn new(tree: Arc<BootTree>, cfg: ServerConfig) -> web::Data<AppState> {
        web::Data::new(AppState {
            tree,
            cfg: Arc::new(cfg),
            cache: AnswerCache::default(),
        })
    }
}

/// All routes of the server; used by `main` and by the tests.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/redirect", web::get().to(redirect))
        .route("/redirect", web::head().to(redirect))
        .route("/redirect", web::to(method_not_allowed))
        .default_service(web::to(plain_file));
}

/// A refusal with a status and a message that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    BadRequest(String),
    #[error("client {0} is not in --allow")]
    Forbidden(IpAddr),
    #[error("not found")]
    NotFound,
    #[error("request URL longer than {MAX_URL} bytes")]
    UriTooLong,
    #[error(
        "request headers too large (at most {MAX_HEADER} bytes each, {MAX_HEADERS_TOTAL} in all)"
    )]
    HeadersTooLarge,
    #[error("method not allowed: use GET or HEAD")]
    Method,
}

impl actix_web::ResponseError for HttpError {
    fn status_code(&self) -> StatusCode {
        match self {
            HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::Forbidden(_) => StatusCode::FORBIDDEN,
            HttpError::NotFound => StatusCode::NOT_FOUND,
            HttpError::UriTooLong => StatusCode::URI_TOO_LONG,
            HttpError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HttpError::Method => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if matches!(self, HttpError::Method) {
            res.insert_header((header::ALLOW, "GET, HEAD"));
        }
        res.content_type("text/plain; charset=utf-8")
            .body(format!("{self}\n"))
    }
}

async fn method_not_allowed() -> Result<HttpResponse, HttpError> {
    Err(HttpError::Method)
}

/// Refuses oversized requests before anything else looks at them.
fn check_limits(req: &HttpRequest) -> Result<(), HttpError> {
    let uri = req.uri();
    if uri.path().len() + uri.query().map_or(0, str::len) > MAX_URL {
        return Err(HttpError::UriTooLong);
    }
    let mut total = 0;
    for (k, v) in req.headers() {
        let n = k.as_str().len() + v.len();
        total += n;
        if n > MAX_HEADER || total > MAX_HEADERS_TOTAL {
            return Err(HttpError::HeadersTooLarge);
        }
    }
    Ok(())
}

fn in_any(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

/// The client's address: the TCP peer, or, only when the peer is a trusted proxy, the
/// rightmost untrusted address of `Forwarded` (preferred) or `X-Forwarded-For`.
pub fn client_ip(req: &HttpRequest, cfg: &ServerConfig) -> Result<IpAddr, HttpError> {
    let peer = req
        .peer_addr()
        .map(|a| normalize_ip(a.ip()))
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    if !in_any(&cfg.trusted_proxies, peer) {
        return Ok(peer);
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    // Only the header the proxy is configured to set: the other one would come straight
    // from the client.
    let (name, values): (&str, Vec<&HeaderValue>) = match cfg.forwarded_header {
        ForwardedHeader::Forwarded => (
            "Forwarded",
            req.headers().get_all(header::FORWARDED).collect(),
        ),
        ForwardedHeader::XForwardedFor => (
            "X-Forwarded-For",
            req.headers().get_all("x-forwarded-for").collect(),
        ),
    };
    let bad = |v: &str| {
        HttpError::BadRequest(format!(
            "{name} from trusted proxy {peer} has an entry that is not an address: {:?}",
            v.chars().take(80).collect::<String>()
        ))
    };
    for value in values {
        let value = value.to_str().map_err(|_| bad("(not ASCII)"))?;
        for elem in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let addr = if name == "Forwarded" {
                let Some(node) = elem.split(';').find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    k.eq_ignore_ascii_case("for")
                        .then_some(v.trim().trim_matches('"'))
                }) else {
                    continue;
                };
                node
            } else {
                elem
            };
            hops.push(parse_node(addr).ok_or_else(|| bad(addr))?);
        }
    }
    let client = hops
        .iter()
        .rev()
        .find(|ip| !in_any(&cfg.trusted_proxies, **ip))
        .or(hops.first())
        .copied()
        .unwrap_or(peer);
    Ok(normalize_ip(client))
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// The `mac` of the query: `Ok(None)` when absent, `Ok(Some(None))` when present but empty
/// (iPXE could not expand it), an error when malformed.
fn query_mac(query: &str) -> Result<Option<Option<MacAddr>>, HttpError> {
    let mut found = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "mac" {
            continue;
        }
        let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
            .decode_utf8()
            .map_err(|_| HttpError::BadRequest("query: mac is not valid UTF-8".into()))?
            .into_owned();
        if found.is_some() {
            return Err(HttpError::BadRequest(
                "query: mac is given twice; give it once, e.g. ?mac=${net0/mac}".into(),
            ));
        }
        found = Some(if v.is_empty() {
            None
        } else {
            Some(
                v.parse::<MacAddr>()
                    .map_err(|e| HttpError::BadRequest(format!("query: {e}")))?,
            )
        });
    }
    Ok(found)
}

/// Text safe inside an iPXE `echo` line: no settings expansion, no line breaks.
fn ipxe_text(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '$' => 'S',
            '\n' | '\r' => ' ',
            c => c,
        })
        .collect()
}

/// A script that prints `lines` and leaves iPXE, so the firmware tries its next boot device.
fn exit_script(lines: &[String]) -> String {
    let mut s = String::from("#!ipxe\n");
    for l in lines {
        let _ = writeln!(s, "echo pxesrv: {}", ipxe_text(l));
    }
    s.push_str(
        "echo pxesrv: leaving iPXE for the next boot device in 5 seconds\nsleep 5\nexit 1\n",
    );
    s
}

fn mac_text(mac: Option<MacAddr>) -> String {
    mac.map_or_else(|| "-".to_string(), |m| m.to_string())
}

fn script_response(rule: &str, body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Pxesrv-Rule", rule.to_string()))
        .body(body)
}

async fn redirect(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, HttpError> {
    let start = Instant::now();
    check_limits(&req)?;
    let cfg = &state.cfg;
    let ip = client_ip(&req, cfg)?;
    if !cfg.allow.is_empty() && !in_any(&cfg.allow, ip) {
        warn!(client = %ip, "boot refused: client not in --allow");
        return Err(HttpError::Forbidden(ip));
    }
    let mac_param = query_mac(req.query_string()).inspect_err(|e| {
        warn!(client = %ip, error = ?e.to_string(), "boot refused: bad request");
    })?;
    let mac = mac_param.flatten();
    let head = req.method() == Method::HEAD;

    if mac_param.is_none() && wants_bootstrap(&req, &state) {
        info!(client = %ip, mac = %"-", rule = %"mac-bootstrap", status = 200,
              "boot: asking the client to come back with its MAC");
        return Ok(script_response(
            "mac-bootstrap",
            "#!ipxe\nchain /redirect?mac=${mac:hexhyp}\n".into(),
        ));
    }

    let client = ClientId::new(ip, mac);
    if let (Some(hook), false) = (&cfg.boot_hook, head) {
        if let Err(e) = run_hook(hook, &client, &state).await {
            error!(client = %ip, mac = %mac_text(mac), rule = %"hook-failed", error = ?e.to_string(),
                   status = 200, "boot: hook failed, client gets an error script");
            return Ok(script_response(
                "hook-failed",
                exit_script(&[
                    format!(
                        "the boot hook failed for this client ({ip}, MAC {})",
                        mac_text(mac)
                    ),
                    e.chars().take(300).collect(),
                ]),
            ));
        }
    }

    let tree = &state.tree;
    for cand in tree.candidates(&client) {
        let once = cand.rule.slot() == Some(Slot::Once);
        let cached = if once {
            None
        } else {
            state.cache.get(tree, &cand.entry)
        };
        let (res, target) = match cached {
            Some(p) => (memory_response(cand.rule, &p), p.target),
            None => {
                let resolved = match tree.resolve(&cand.entry) {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(client = %ip, mac = %mac_text(mac), entry = %cand.entry, problem = ?e.to_string(),
                              "boot: skipping broken entry");
                        continue;
                    }
                };
                if once && !head {
                    match tree.consume_once(&cand.entry) {
                        Ok(Some(record)) => {
                            info!(client = %ip, mac = %mac_text(mac), entry = %cand.entry,
                                  target = %rel(tree, &resolved.path), record = %record.display(),
                                  "audit: once entry consumed (move the record back to undo)");
                        }
                        Ok(None) => continue, // another request of this client took it
                        Err(e) => {
                            error!(client = %ip, mac = %mac_text(mac), entry = %cand.entry, problem = ?e.to_string(),
                                   "boot: once entry cannot be consumed, so it is not served");
                            continue;
                        }
                    }
                }
                let meta = resolved.meta.clone();
                let target = rel(tree, &resolved.path);
                match prepare(resolved, target.clone()) {
                    Ok(p) => {
                        if !once {
                            state.cache.put(tree, &cand.entry, &meta, &p);
                        }
                        (memory_response(cand.rule, &p), target)
                    }
                    Err(resolved) => (stream_response(&req, cand.rule, &target, resolved), target),
                }
            }
        };
        let (status, bytes) = (res.status().as_u16(), content_length(&res));
        if head {
            // A probe (healthcheck, sanboot's size query): not a boot, nothing consumed.
            debug!(client = %ip, mac = %mac_text(mac), rule = %cand.rule.as_str(), entry = %cand.entry,
                   target = %target, status, bytes, ms = ms(start), "head");
        } else {
            info!(client = %ip, mac = %mac_text(mac), rule = %cand.rule.as_str(), entry = %cand.entry,
                  target = %target, status, bytes, ms = ms(start), "boot");
        }
        return Ok(res);
    }

    error!(client = %ip, mac = %mac_text(mac), rule = %"no-default", status = 200, ms = ms(start),
           "boot: no entry for this client and no usable default; create {}/default",
           tree.root().display());
    Ok(script_response(
        "no-default",
        exit_script(&[format!(
            "no boot entry for this client ({ip}, MAC {}) and no default script on this server",
            mac_text(mac)
        )]),
    ))
}

fn wants_bootstrap(req: &HttpRequest, state: &AppState) -> bool {
    match state.cfg.mac_bootstrap {
        MacBootstrap::Never => false,
        MacBootstrap::Always => true,
        MacBootstrap::Auto => {
            let ipxe = req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ua| ua.starts_with("iPXE/"));
            ipxe && state.tree.has_mac_entries()
        }
    }
}

async fn run_hook(hook: &[String], client: &ClientId, state: &AppState) -> Result<(), String> {
    let argv = Argv::new(&hook[0])
        .args(&hook[1..])
        .env("PXESRV_CLIENT_IP", client.ip.to_string())
        .env(
            "PXESRV_CLIENT_MAC",
            client.mac.map(|m| m.to_string()).unwrap_or_default(),
        )
        .env("PXESRV_ROOT", state.tree.root());
    let timeout = state.cfg.boot_hook_timeout;
    match web::block(move || process::run(&argv, Some(timeout))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("boot hook could not be run: {e}")),
    }
}

/// An answer small enough to be held in memory: a script (rebased) or a small file.
#[derive(Clone)]
struct Prepared {
    target: String,
    mime: String,
    body: web::Bytes,
}

/// Reads a resolved entry into memory when it is small; `Err` gives it back for streaming.
fn prepare(mut resolved: Resolved, target: String) -> Result<Prepared, Box<Resolved>> {
    if resolved.meta.len() > SCRIPT_MAX {
        return Err(Box::new(resolved));
    }
    let mut body = Vec::with_capacity(resolved.meta.len() as usize);
    if resolved.file.read_to_end(&mut body).is_err() {
        return Err(Box::new(resolved));
    }
    let (body, mime) = match std::str::from_utf8(&body) {
        Ok(text) if script::is_ipxe_script(&body) => (
            script::rebase(text, &base_dir(&target))
                .into_owned()
                .into_bytes(),
            "text/plain; charset=utf-8".to_string(),
        ),
        _ => (body, mime_of(&resolved.path)),
    };
    Ok(Prepared {
        target,
        mime,
        body: body.into(),
    })
}

fn memory_response(rule: Rule, p: &Prepared) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(p.mime.as_str())
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Pxesrv-Rule", rule.as_str()))
        .insert_header(("X-Pxesrv-Target", header_text(&p.target)))
        .body(p.body.clone())
}

fn stream_response(
    req: &HttpRequest,
    rule: Rule,
    target: &str,
    resolved: Box<Resolved>,
) -> HttpResponse {
    let Resolved { file, path, .. } = *resolved;
    match NamedFile::from_file(file, &path) {
        Ok(f) => {
            let mut res = f.disable_content_disposition().into_response(req);
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res.headers_mut().insert(
                header::HeaderName::from_static("x-pxesrv-rule"),
                HeaderValue::from_static(rule.as_str()),
            );
            if let Ok(v) = HeaderValue::from_str(&header_text(target)) {
                res.headers_mut()
                    .insert(header::HeaderName::from_static("x-pxesrv-target"), v);
            }
            res
        }
        Err(e) => HttpResponse::InternalServerError().body(format!("{e}\n")),
    }
}

/// Identity of a file's content as `stat` sees it: any change of link, file or mode shows.
#[derive(Clone, Copy, PartialEq, Eq)]
struct StatKey([i64; 7]);

impl StatKey {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        StatKey([
            m.dev() as i64,
            m.ino() as i64,
            m.size() as i64,
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        ])
    }

    /// A file changed within the coarse clock's tick may change again without a new stamp;
    /// only a settled stamp is proof of the content.
    fn settled(m: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        let changed = std::time::UNIX_EPOCH
            + std::time::Duration::new(m.ctime().max(0) as u64, m.ctime_nsec().max(0) as u32);
        crate::boottree::settled(changed, std::time::SystemTime::now())
    }
}

/// `lstat` of an entry and `stat` of the file it leads to.
type EntryKeys = (StatKey, StatKey);

/// Prepared answers of `default` and `static/` entries, each valid while one `stat` of the
/// entry (following its links) shows the same file unchanged. Saves the link walk, the open
/// and the read on every boot; a changed link or file is seen by the next request.
#[derive(Default)]
pub struct AnswerCache {
    map: std::sync::RwLock<std::collections::HashMap<String, (EntryKeys, Prepared)>>,
}

impl AnswerCache {
    /// The entry itself (`lstat`) and the file it leads to (`stat`): re-pointing the entry at a
    /// hard link of the same file still changes the first.
    fn keys(tree: &BootTree, entry: &str) -> Option<EntryKeys> {
        let path = tree.root().join(entry);
        let link = std::fs::symlink_metadata(&path).ok()?;
        let file = std::fs::metadata(&path).ok()?;
        Some((StatKey::of(&link), StatKey::of(&file)))
    }

    fn get(&self, tree: &BootTree, entry: &str) -> Option<Prepared> {
        let keys = Self::keys(tree, entry)?;
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        match map.get(entry) {
            Some((k, p)) if *k == keys => Some(p.clone()),
            _ => None,
        }
    }

    /// Caches `p` for `entry`, whose target was read with metadata `meta`, unless either
    /// changed too recently to be sure, or changed since.
    fn put(&self, tree: &BootTree, entry: &str, meta: &std::fs::Metadata, p: &Prepared) {
        let Some(keys) = Self::keys(tree, entry) else {
            return;
        };
        if keys.1 != StatKey::of(meta) || !StatKey::settled(meta) {
            return;
        }
        if let Ok(link) = std::fs::symlink_metadata(tree.root().join(entry)) {
            if !StatKey::settled(&link) {
                return;
            }
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            map.clear();
        }
        map.insert(entry.to_string(), (keys, p.clone()));
    }
}

/// A path as a header value: non-ASCII and control characters percent-encoded.
fn header_text(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::CONTROLS).to_string()
}

fn mime_of(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| actix_files::file_extension_to_mime(e).to_string())
        .unwrap_or_else(|| "application/octet-stream".into())
}

/// The URL directory of `target` (relative to the root), for rebasing relative URIs. Files in
/// `once/` and `static/` are not served by URL, so their scripts resolve against `/`.
fn base_dir(target: &str) -> String {
    match target.rsplit_once('/') {
        Some((dir, _)) if !matches!(dir.split('/').next(), Some("once" | "static")) => {
            let mut out = String::from("/");
            for seg in dir.split('/') {
                out.push_str(&percent_encoding::utf8_percent_encode(seg, SEGMENT).to_string());
                out.push('/');
            }
            out
        }
        _ => "/".into(),
    }
}

const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'?')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}');

fn rel(tree: &BootTree, path: &Path) -> String {
    path.strip_prefix(tree.root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn ms(start: Instant) -> f64 {
    (start.elapsed().as_micros() as f64) / 1000.0
}

fn content_length(res: &HttpResponse) -> u64 {
    use actix_web::body::{BodySize, MessageBody};
    match res.body().size() {
        BodySize::Sized(n) => n,
        _ => res
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0),
    }
}

async fn plain_file(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, HttpError> {
    let start = Instant::now();
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(HttpError::Method);
    }
    check_limits(&req)?;
    let ip = client_ip(&req, &state.cfg)?;
    if !state.cfg.allow.is_empty() && !in_any(&state.cfg.allow, ip) {
        warn!(client = %ip, path = %req.path(), "download refused: client not in --allow");
        return Err(HttpError::Forbidden(ip));
    }
    let Some(path) = state.tree.public_path(req.path()) else {
        info!(client = %ip, path = %req.path(), status = 404, "download");
        return Err(HttpError::NotFound);
    };
    if path.is_dir() {
        if !state.cfg.autoindex {
            info!(client = %ip, path = %req.path(), status = 404, "download: directory listing is off (--autoindex)");
            return Err(HttpError::NotFound);
        }
        return Ok(HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(listing(req.path(), &path, &state.tree)));
    }
    let file = File::open(&path).map_err(|_| HttpError::NotFound)?;
    let named = NamedFile::from_file(file, &path).map_err(|_| HttpError::NotFound)?;
    let res = named.disable_content_disposition().into_response(&req);
    let (status, bytes) = (res.status().as_u16(), content_length(&res));
    if req.method() == Method::HEAD {
        debug!(client = %ip, path = %req.path(), status, bytes, "head");
    } else {
        info!(client = %ip, path = %req.path(), status, bytes, ms = ms(start), "download");
    }
    Ok(res)
}

fn listing(url: &str, dir: &Path, tree: &BootTree) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let mut names: Vec<(String, bool)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let is_dir = e.path().is_dir();
                    Some((name, is_dir))
                })
                .filter(|(n, _)| !n.starts_with('.'))
                .filter(|(n, _)| dir != tree.root() || (n != "once" && n != "static"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let base = if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    };
    let mut html = format!(
        "<!DOCTYPE html>\n<title>{0}</title>\n<h1>{0}</h1>\n<ul>\n",
        esc(&base)
    );
    for (n, is_dir) in names {
        let slash = if is_dir { "/" } else { "" };
        let href = percent_encoding::utf8_percent_encode(&n, SEGMENT).to_string();
        let _ = writeln!(
            html,
            "<li><a href=\"{}{href}{slash}\">{}{slash}</a></li>",
            esc(&base),
            esc(&n)
        );
    }
    html.push_str("</ul>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_query() {
        assert_eq!(query_mac("").unwrap(), None);
        assert_eq!(query_mac("x=1").unwrap(), None);
        assert_eq!(query_mac("mac=").unwrap(), Some(None));
        let m: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(
            query_mac("mac=52%3A54%3A00%3A12%3A34%3A56").unwrap(),
            Some(Some(m))
        );
        assert_eq!(
            query_mac("uuid=x&mac=52-54-00-12-34-56").unwrap(),
            Some(Some(m))
        );
        assert!(query_mac("mac=zz").is_err());
        assert!(query_mac("mac=%ff%fe").is_err());
        assert!(query_mac("mac=525400123456&mac=525400123456").is_err());
        assert!(query_mac("mac=../../etc/passwd").is_err());
    }

    #[test]
    fn base_dirs() {
        assert_eq!(base_dir("default"), "/");
        assert_eq!(base_dir("menus/x.ipxe"), "/menus/");
        assert_eq!(base_dir("a b/c/x.ipxe"), "/a%20b/c/");
        assert_eq!(base_dir("static/x"), "/");
        assert_eq!(base_dir("once/sub/x"), "/");
        assert_eq!(base_dir("static-menus/x.ipxe"), "/static-menus/");
        assert_eq!(base_dir("oncelab/x.ipxe"), "/oncelab/");
    }

    #[test]
    fn nodes() {
        assert_eq!(parse_node("1.2.3.4:80"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(
            parse_node("[2001:db8::1]:80"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            parse_node("[2001:db8::1]"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(parse_node("unknown"), None);
        assert_eq!(parse_node("_hidden"), None);
    }

    #[test]
    fn echo_text_cannot_expand_settings() {
        let s = exit_script(&["bad ${net0/mac}\nchain http://evil".into()]);
        assert!(!s.contains("${"));
        assert_eq!(s.lines().filter(|l| l.starts_with("chain")).count(), 0);
    }
}
