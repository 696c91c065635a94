//! `thin-apiproxy`: a TLS proxy in front of the test kube-apiserver that
//! injects the API faults design.md says the protocol must survive: a write
//! that fails, one that takes effect without its reply arriving, and one
//! whose reply never comes in time.
//!
//!   thin-apiproxy --upstream https://127.0.0.1:PORT --ca CA --cert CRT --key KEY
//!                 --client-cert CRT --client-key KEY [--ports-file FILE]
//!
//! It serves HTTP/1.1 over TLS on 127.0.0.1 (a random port; a qemu guest
//! reaches it at 10.0.2.2), with the serving cert the harness signs with
//! the cluster's CA, and forwards every request to the apiserver with the
//! harness's client certificate. Responses stream (watches, chunked lists).
//!
//! Rules are set at runtime on a plain-HTTP control port on 127.0.0.1:
//!   PUT /rules   one rule a line: `VERB PATH_REGEX NTH ACTION`, replacing every
//!                rule and its counts. VERB is the HTTP method, or WATCH for a
//!                GET with watch=true (so a GET rule never hits a watch), or `*`.
//!                NTH: the rule fires on its NTH match, once. ACTION (a forwarding
//!                one may end in `@applied`: it then counts only matches the
//!                apiserver answered 2xx, so a lost reply is one of a write that
//!                took effect, not of a 409 the client would retry anyway):
//!                  fail[:CODE]   answer CODE (503) without forwarding
//!                  lose          forward, read the whole reply, close the connection
//!                  timeout:MS    forward, hold the reply MS ms, close the connection
//!                  delay:MS      forward, hold the reply MS ms, then send it
//!   GET /rules   per rule: its line, matches so far, whether it fired
//!   GET /log     every injection so far, one line each
//!   GET /held    how many replies a fault is holding right now
//! Each injection is also logged on stderr as `INJECT ...`.
//!
//! `--ports-file` receives `PROXY_PORT CONTROL_PORT` once both listen.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use regex::Regex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, hyper::Error>;
type Upstream = Client<hyper_rustls::HttpsConnector<HttpConnector>, Incoming>;

#[derive(Clone, Debug, PartialEq)]
enum Action {
    Fail(u16),
    Lose,
    Timeout(Duration),
    Delay(Duration),
}

#[derive(Debug)]
struct Rule {
    line: String,
    verb: String,
    path: Regex,
    nth: u64,
    action: Action,
    /// Count only matches the apiserver answered 2xx (forwarding actions).
    applied: bool,
    matches: u64,
    fired: bool,
}

fn parse_rule(line: &str) -> Result<Rule, String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let [verb, path, nth, action] = f.as_slice() else { return Err(format!("{line:?}: want VERB PATH_REGEX NTH ACTION")) };
    let path = Regex::new(path).map_err(|e| format!("{line:?}: {e}"))?;
    let nth: u64 = nth.parse().ok().filter(|n| *n > 0).ok_or_else(|| format!("{line:?}: NTH must be a number >= 1"))?;
    let (action, applied) = match action.strip_suffix("@applied") {
        Some(a) => (a, true),
        None => (*action, false),
    };
    let ms = |v: &str| v.parse::<u64>().map(Duration::from_millis).map_err(|_| format!("{line:?}: bad milliseconds {v:?}"));
    let action = match action.split_once(':') {
        None if action == "fail" => Action::Fail(503),
        None if action == "lose" => Action::Lose,
        Some(("fail", code)) => Action::Fail(code.parse().ok().filter(|c| (400..600).contains(c)).ok_or_else(|| format!("{line:?}: bad code"))?),
        Some(("timeout", v)) => Action::Timeout(ms(v)?),
        Some(("delay", v)) => Action::Delay(ms(v)?),
        _ => return Err(format!("{line:?}: unknown action {action:?}")),
    };
    if applied && matches!(action, Action::Fail(_)) {
        return Err(format!("{line:?}: fail forwards nothing, so @applied means nothing"));
    }
    Ok(Rule { line: line.trim().to_string(), verb: verb.to_uppercase(), path, nth, action, applied, matches: 0, fired: false })
}

#[derive(Default)]
struct Rules {
    rules: Vec<Rule>,
    log: Vec<String>,
}

impl Rules {
    /// Counts the request against every rule it matches; the first rule
    /// whose NTH match this is fires (once). `status` is the apiserver's
    /// answer: None before forwarding, when only rules without `@applied`
    /// count; Some after, when only `@applied` rules count (a 2xx).
    fn hit(&mut self, verb: &str, path: &str, status: Option<u16>) -> Option<(usize, Action)> {
        let mut fire = None;
        for (i, r) in self.rules.iter_mut().enumerate() {
            let counts = match status {
                None => !r.applied,
                Some(code) => r.applied && (200..300).contains(&code),
            };
            if counts && (r.verb == "*" || r.verb == verb) && r.path.is_match(path) {
                r.matches += 1;
                if !r.fired && r.matches == r.nth && fire.is_none() {
                    r.fired = true;
                    fire = Some((i, r.action.clone()));
                }
            }
        }
        fire
    }
}

struct State {
    upstream: Upstream,
    base: String,
    rules: Mutex<Rules>,
    /// Replies a fault is holding now (the driver waits for 0 between scenarios).
    held: std::sync::atomic::AtomicUsize,
}

impl State {
    fn record(&self, line: String) {
        eprintln!("INJECT {line}");
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).log.push(line);
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|never: Infallible| match never {}).boxed());
    *r.status_mut() = status;
    r
}

/// The verb a rule names: WATCH for a watch (a long-running GET), else the method.
fn verb(req: &Request<Incoming>) -> String {
    let watch = req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    if watch { "WATCH".into() } else { req.method().as_str().to_string() }
}

/// The connection is to be closed without a reply: hyper's HTTP/1 server
/// closes it when the service fails, writing nothing.
#[derive(Debug)]
struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reply dropped by an injected fault")
    }
}
impl std::error::Error for Dropped {}

const HOP_BY_HOP: [&str; 5] = ["connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection"];

async fn proxy(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Dropped> {
    let verb = verb(&req);
    let path = req.uri().path().to_string();
    let target = format!("{}{}", state.base, req.uri().path_and_query().map_or("/", |p| p.as_str()));
    let mut fault = state.rules.lock().unwrap_or_else(|e| e.into_inner()).hit(&verb, &path, None);
    let what = |rule: usize, action: &str, outcome: &str| format!("rule={rule} {action} {verb} {path} {outcome}");
    if let Some((rule, Action::Fail(code))) = &fault {
        state.record(what(*rule, &format!("fail:{code}"), "not forwarded"));
        let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        // A Status object, as the apiserver itself sends, so clients parse it as one.
        let body = format!(r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"injected by thin-apiproxy","reason":"ServiceUnavailable","code":{code}}}"#);
        let mut r = full(status, body);
        r.headers_mut().insert("content-type", "application/json".parse().expect("static"));
        return Ok(r);
    }
    let (mut parts, body) = req.into_parts();
    parts.uri = match target.parse() {
        Ok(u) => u,
        Err(e) => return Ok(full(StatusCode::BAD_REQUEST, format!("bad path: {e}"))),
    };
    parts.headers.remove("host");
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    let reply = match state.upstream.request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("upstream error for {verb} {path}: {e}");
            return Ok(full(StatusCode::BAD_GATEWAY, format!("thin-apiproxy: upstream: {e}")));
        }
    };
    let (mut parts, body) = reply.into_parts();
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    if fault.is_none() {
        fault = state.rules.lock().unwrap_or_else(|e| e.into_inner()).hit(&verb, &path, Some(parts.status.as_u16()));
    }
    let Some((rule, action)) = fault else {
        return Ok(Response::from_parts(parts, body.boxed())); // streams
    };
    // The apiserver has answered (so the write took effect, or not, for
    // real); read its whole reply before deciding what the client gets.
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            eprintln!("upstream body error for {verb} {path}: {e}");
            return Err(Dropped);
        }
    };
    let upstream = format!("upstream={}", parts.status.as_u16());
    match action {
        Action::Lose => {
            state.record(what(rule, "lose", &format!("{upstream}, reply dropped")));
            Err(Dropped)
        }
        // Logged when the hold starts: a client that gives up closes the
        // connection, and hyper then drops this future mid-sleep.
        Action::Timeout(d) => {
            state.record(what(rule, &format!("timeout:{}", d.as_millis()), &format!("{upstream}, reply held, then dropped")));
            let _held = Held::new(&state.held);
            tokio::time::sleep(d).await;
            Err(Dropped)
        }
        Action::Delay(d) => {
            state.record(what(rule, &format!("delay:{}", d.as_millis()), &format!("{upstream}, reply held, then sent")));
            let _held = Held::new(&state.held);
            tokio::time::sleep(d).await;
            Ok(Response::from_parts(parts, Full::new(bytes).map_err(|never: Infallible| match never {}).boxed()))
        }
        Action::Fail(_) => unreachable!("answered above"),
    }
}

/// Counts a held reply for as long as it lives (also when hyper drops it).
struct Held<'a>(&'a std::sync::atomic::AtomicUsize);
impl<'a> Held<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Held(n)
    }
}
impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn control(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    Ok(match (method.as_str(), path.as_str()) {
        ("PUT", "/rules") => {
            let text = match req.into_body().collect().await {
                Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                Err(e) => return Ok(full(StatusCode::BAD_REQUEST, e.to_string())),
            };
            match text.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).map(parse_rule).collect::<Result<Vec<_>, _>>() {
                Ok(rules) => {
                    let n = rules.len();
                    for r in &rules {
                        eprintln!("RULE {}", r.line);
                    }
                    state.rules.lock().unwrap_or_else(|e| e.into_inner()).rules = rules;
                    full(StatusCode::OK, format!("{n} rules\n"))
                }
                Err(e) => full(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        ("GET", "/rules") => {
            let rules = state.rules.lock().unwrap_or_else(|e| e.into_inner());
            let text: String = rules.rules.iter().map(|r| format!("{}\tmatches={}\tfired={}\n", r.line, r.matches, r.fired)).collect();
            full(StatusCode::OK, text)
        }
        ("GET", "/log") => {
            let rules = state.rules.lock().unwrap_or_else(|e| e.into_inner());
            full(StatusCode::OK, rules.log.iter().map(|l| format!("{l}\n")).collect::<String>())
        }
        ("GET", "/held") => full(StatusCode::OK, format!("{}\n", state.held.load(std::sync::atomic::Ordering::SeqCst))),
        _ => full(StatusCode::NOT_FOUND, "PUT /rules, GET /rules, GET /log, GET /held\n"),
    })
}

fn args() -> Result<std::collections::BTreeMap<String, String>, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut m = std::collections::BTreeMap::new();
    let mut it = argv.iter();
    while let Some(k) = it.next() {
        let k = k.strip_prefix("--").ok_or_else(|| format!("unexpected argument {k:?}"))?;
        let v = it.next().ok_or_else(|| format!("--{k} needs a value"))?;
        m.insert(k.to_string(), v.clone());
    }
    for need in ["upstream", "ca", "cert", "key", "client-cert", "client-key"] {
        if !m.contains_key(need) {
            return Err(format!("--{need} is required"));
        }
    }
    Ok(m)
}

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path).and_then(|i| i.collect()).map_err(|e| format!("{path}: {e}"))
}

fn key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{path}: {e}"))
}

async fn run() -> Result<(), String> {
    let a = args()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Upstream: the cluster's CA, the harness's client certificate.
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&a["ca"])? {
        roots.add(c).map_err(|e| format!("CA: {e}"))?;
    }
    let client_tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(&a["client-cert"])?, key(&a["client-key"])?)
        .map_err(|e| format!("client cert: {e}"))?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(client_tls).https_only().enable_http1().wrap_connector(http);
    let upstream: Upstream = Client::builder(TokioExecutor::new()).build(https);
    let base = a["upstream"].trim_end_matches('/').to_string();
    let state = Arc::new(State { upstream, base, rules: Mutex::new(Rules::default()), held: Default::default() });

    // Downstream: TLS with the serving cert the harness signed; HTTP/1.1 only,
    // so a dropped reply closes exactly one request's connection.
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs(&a["cert"])?, key(&a["key"])?)
        .map_err(|e| format!("serving cert: {e}"))?;
    server_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let control_listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let (pp, cp) = (listener.local_addr().map_err(|e| e.to_string())?.port(), control_listener.local_addr().map_err(|e| e.to_string())?.port());
    if let Some(f) = a.get("ports-file") {
        // Written whole, then renamed: a reader never sees half a line.
        let tmp = format!("{f}.tmp");
        std::fs::write(&tmp, format!("{pp} {cp}\n")).and_then(|_| std::fs::rename(&tmp, f)).map_err(|e| format!("{f}: {e}"))?;
    }
    eprintln!("thin-apiproxy: proxy on 127.0.0.1:{pp} → {}, control on 127.0.0.1:{cp}", state.base);
    let _ = std::io::stderr().flush();

    let cstate = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = control_listener.accept().await else { continue };
            let s = cstate.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| control(s.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(sock), svc).await;
            });
        }
    });
    loop {
        let (sock, peer): (_, SocketAddr) = listener.accept().await.map_err(|e| e.to_string())?;
        let _ = sock.set_nodelay(true);
        let (acceptor, s) = (acceptor.clone(), state.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(sock).await {
                Ok(t) => t,
                Err(e) => return eprintln!("TLS handshake with {peer}: {e}"),
            };
            let svc = service_fn(move |req| proxy(s.clone(), req));
            // An Err here is a dropped reply (or a client gone): nothing to do.
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
        });
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thin-apiproxy: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_fire_once_on_the_nth_match() {
        let mut rules = Rules::default();
        rules.rules.push(parse_rule("PUT ^/apis/thin.csi.io/v1alpha1/thinpools/[^/]+$ 2 lose").unwrap());
        rules.rules.push(parse_rule("PATCH /status$ 1 timeout:1500").unwrap());
        assert_eq!(rules.hit("PUT", "/apis/thin.csi.io/v1alpha1/thinpools/p1", None), None);
        // A status subresource does not match the object's rule.
        assert_eq!(rules.hit("PUT", "/apis/thin.csi.io/v1alpha1/thinpools/p1/status", None), None);
        assert_eq!(rules.hit("PUT", "/apis/thin.csi.io/v1alpha1/thinpools/p1", None), Some((0, Action::Lose)));
        assert_eq!(rules.hit("PUT", "/apis/thin.csi.io/v1alpha1/thinpools/p1", None), None);
        assert_eq!(rules.hit("PATCH", "/apis/thin.csi.io/v1alpha1/thinpools/p1/status", None), Some((1, Action::Timeout(Duration::from_millis(1500)))));
        assert_eq!(rules.rules[0].matches, 3);
        // @applied: only replies the apiserver answered 2xx count.
        let mut rules = Rules::default();
        rules.rules.push(parse_rule("PUT /thinpools/ 1 lose@applied").unwrap());
        assert_eq!(rules.hit("PUT", "/thinpools/p1", None), None);
        assert_eq!(rules.hit("PUT", "/thinpools/p1", Some(409)), None);
        assert_eq!(rules.hit("PUT", "/thinpools/p1", Some(200)), Some((0, Action::Lose)));
        assert!(parse_rule("PUT x 1 fail@applied").is_err());
        assert!(parse_rule("PUT x 0 lose").is_err());
        assert!(parse_rule("PUT x 1 explode").is_err());
        assert_eq!(parse_rule("* x 1 fail:500").unwrap().action, Action::Fail(500));
        assert_eq!(parse_rule("POST x 1 fail").unwrap().action, Action::Fail(503));
    }
}
