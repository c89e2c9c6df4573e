//! The edge of every request: one hand-written tower layer ([`Edge`]) that does what eight
//! layers did before, in one future per request.
//!
//! In order: a request id (the client's, or a new UUID v4), credentials marked sensitive, the
//! body limit (a declared length over it is a 413 at once; extractors cut undeclared bodies at
//! it), the rate limiter, the handler (a panic becomes a problem+json 500), the request timeout
//! (503), compression when the client asks for it; then problem+json for every error body the
//! framework produces, the security headers, the request metrics and one log line.
//!
//! Why one layer: with tower-http's layers and `from_fn`, every request cloned the whole stack,
//! boxed a future per `from_fn`, wrapped the body once per layer and armed a timer it almost
//! never needed. Measured with callgrind on `GET /api/health`, the stack cost more than twice
//! the instructions of the server under it (`docs/performance.md`).

use std::{
    cell::RefCell,
    convert::Infallible,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, LazyLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_http::{
    CompressionLevel,
    compression::{
        Compression,
        predicate::{And, DefaultPredicate, Predicate, SizeAbove},
    },
};

use crate::{
    cache::coding::MIN_COMPRESS,
    error::{ApiError, PROBLEM_JSON, Problem, problem_response},
    ratelimit::{Admission, Gate},
};

/// The layer; see the module documentation.
#[derive(Clone)]
pub struct Edge {
    shared: Arc<Shared>,
}

struct Shared {
    timeout: Duration,
    body_limit: usize,
    /// `None` in tests of the stack alone.
    gate: Option<Gate>,
}

impl Edge {
    pub fn new(timeout: Duration, body_limit: usize, gate: Option<Gate>) -> Self {
        Self {
            shared: Arc::new(Shared {
                timeout,
                body_limit,
                gate,
            }),
        }
    }
}

impl<S> Layer<S> for Edge {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> EdgeService<S> {
        EdgeService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct EdgeService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request> for EdgeService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let started = Instant::now();
        let method = method_label(req.method());
        let matched = req.extensions().get::<MatchedPath>().cloned();
        let read = RequestHeaders::read(req.headers());
        if read.credentials {
            hide_credentials(req.headers_mut());
        }
        let in_flight = InFlight::start();
        // Everything that needs the request happens here, so the future below does not keep
        // it; the handler's future is made now (a route clones itself for it) and only polled
        // once the rate limiter has admitted the request.
        let stage = match prepare(&self.shared, &mut self.inner, req, &read) {
            Handling::Refused(response) => Stage::Refused {
                response: Some(response),
            },
            Handling::Ready {
                handler,
                plan: Some(plan),
            } => Stage::Admitting {
                admit: admit(self.shared.clone(), plan),
                handler: Some(handler),
            },
            Handling::Ready { handler, .. } => Stage::Handling { handler },
        };
        Box::pin(EdgeFuture {
            stage,
            timer: None,
            counted: None,
            shared: self.shared.clone(),
            started,
            method,
            matched,
            request_id: read.request_id,
            in_flight: Some(in_flight),
        })
    }
}

/// The rate limiter's decision on a planned request. Only the gate makes plans, so it is
/// there; were it not, the request would go unlimited rather than fail.
async fn admit(shared: Arc<Shared>, plan: crate::ratelimit::Plan) -> Option<Admission> {
    match &shared.gate {
        Some(gate) => Some(gate.admit(plan).await),
        None => None,
    }
}

/// Counts a request in flight until dropped: a request whose client went away mid-way is not
/// left counted forever.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        IN_FLIGHT.increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.decrement(1.0);
    }
}

/// A request about to be handled: refused before it started, or the handler's future with the
/// rate limiter's plan for it.
enum Handling<F, C> {
    Refused(Response),
    Ready {
        handler: Handler<F, C>,
        plan: Option<crate::ratelimit::Plan>,
    },
}

pin_project! {
    /// The handler's future, through tower-http's compression when the client asked for it
    /// (boxed: compressing costs far more than the allocation, and the common future stays
    /// small).
    #[project = HandlerProj]
    enum Handler<F, C> {
        Plain { #[pin] future: F },
        Compressed { future: Pin<Box<C>> },
    }
}

impl<F, C, B> Future for Handler<F, C>
where
    F: Future<Output = Result<Response, Infallible>>,
    C: Future<Output = Result<Response<B>, Infallible>>,
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Response;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        match self.project() {
            HandlerProj::Plain { future } => future.poll(cx).map(|r| {
                let mut response = r.unwrap_or_else(|never| match never {});
                vary_if_compressible(&mut response);
                response
            }),
            HandlerProj::Compressed { future } => future
                .as_mut()
                .poll(cx)
                .map(|r| r.unwrap_or_else(|never| match never {}).map(Body::new)),
        }
    }
}

/// What the edge compresses on the fly: tower-http's defaults (not images, event streams or
/// gRPC) above [`MIN_COMPRESS`] bytes.
type Compressible = And<DefaultPredicate, SizeAbove>;

fn compressible_predicate() -> Compressible {
    DefaultPredicate::new().and(SizeAbove::new(MIN_COMPRESS as u64))
}

/// tower-http's compression as the edge runs it, for responses compressed as they go out:
/// bodies of at least [`MIN_COMPRESS`] bytes, at the fastest level, in brotli, gzip or deflate.
/// Each response gets a fresh encoder, and at the default levels brotli's and zstd's are
/// multi-megabyte allocations the kernel maps and faults in per response (a 14 KB JSON list
/// took 1.4 ms of CPU in brotli, 0.6 ms in zstd, 0.24 ms in gzip; brotli at the fastest level,
/// quality 0, 0.08 ms). zstd stayed expensive at its fastest level too (level 1: 0.2 ms, mostly
/// the kernel's), and every client that takes it takes gzip too. Bodies kept in the cache are compressed once instead (`cache::coding`).
fn compression<S>(inner: S) -> Compression<S, Compressible> {
    Compression::new(inner)
        .no_zstd()
        .quality(CompressionLevel::Fastest)
        .compress_when(compressible_predicate())
}

type Prepared<S> = Handling<
    <S as Service<Request>>::Future,
    tower_http::compression::ResponseFuture<<S as Service<Request>>::Future, Compressible>,
>;

/// The body limit, the rate limiter's plan and the handler's future.
fn prepare<S>(
    shared: &Shared,
    inner: &mut S,
    mut req: Request,
    read: &RequestHeaders,
) -> Prepared<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    if read
        .declared_length
        .is_some_and(|n| n > shared.body_limit as u64)
    {
        return Handling::Refused(ApiError::PayloadTooLarge.into_response());
    }
    // Extractors cut undeclared (chunked) bodies at the limit; a request without a body has
    // nothing to cut, and most requests have none.
    if read.body {
        DefaultBodyLimit::max(shared.body_limit).apply(&mut req);
    }
    let plan = shared.gate.as_ref().and_then(|gate| gate.plan(&req));
    let compress = read.accepts_encoding;
    // Making a handler's future runs no handler code, but a panic here is caught all the same.
    let made = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if compress {
            // tower-http negotiates the encoding (and answers 406 when none is acceptable).
            Handler::Compressed {
                future: Box::pin(compression(&mut *inner).call(req)),
            }
        } else {
            Handler::Plain {
                future: inner.call(req),
            }
        }
    }));
    match made {
        Ok(handler) => Handling::Ready { handler, plan },
        Err(_) => Handling::Refused(panicked()),
    }
}

pin_project! {
    /// Where a request is: refused before it ran, waiting for the rate limiter, or in its
    /// handler.
    #[project = StageProj]
    enum Stage<H, A> {
        Refused { response: Option<Response> },
        Admitting { #[pin] admit: A, handler: Option<H> },
        Handling { #[pin] handler: H },
    }
}

pin_project! {
    /// One request through the edge, written out by hand rather than as nested `async` blocks:
    /// those kept each stage's state apart and were copied whole at every step (three
    /// kilobytes, moved several times per request). In order: the rate limiter (when the
    /// request was planned), the handler, both within the request timeout and with panics
    /// caught; then [`finish`].
    ///
    /// The timer is armed only when the request has to wait: most answers (health, cached
    /// reads) are ready on their first poll and never touch the timer wheel.
    struct EdgeFuture<H, A> {
        #[pin]
        stage: Stage<H, A>,
        #[pin]
        timer: Option<tokio::time::Sleep>,
        counted: Option<crate::ratelimit::Counted>,
        shared: Arc<Shared>,
        started: Instant,
        method: &'static str,
        matched: Option<MatchedPath>,
        request_id: HeaderValue,
        in_flight: Option<InFlight>,
    }
}

impl<H, A> Future for EdgeFuture<H, A>
where
    H: Future<Output = Response>,
    A: Future<Output = Option<Admission>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared: &Shared = this.shared;
        let (mut stage, counted) = (this.stage.as_mut(), &mut *this.counted);
        // A panic in the limiter or the handler becomes a problem+json 500 (logged), so the
        // request still gets its id, metrics and log line, and the connection stays up.
        let polled =
            std::panic::catch_unwind(AssertUnwindSafe(|| drive(&mut stage, counted, shared, cx)));
        let response = match polled {
            Ok(Poll::Ready(response)) => response,
            Err(_) => panicked(),
            Ok(Poll::Pending) => {
                if this.timer.is_none() {
                    let deadline = tokio::time::Instant::from_std(*this.started) + shared.timeout;
                    this.timer.set(Some(tokio::time::sleep_until(deadline)));
                }
                match this.timer.as_pin_mut().map(|timer| timer.poll(cx)) {
                    Some(Poll::Ready(())) => ApiError::Timeout.into_response(),
                    _ => return Poll::Pending,
                }
            }
        };
        // The stage's futures are done (or given up); what they hold goes now.
        this.stage.set(Stage::Refused { response: None });
        drop(this.in_flight.take());
        Poll::Ready(Ok(finish(
            response,
            *this.started,
            this.method,
            this.matched.as_ref(),
            this.request_id,
        )))
    }
}

/// Polls the stage on: the rate limiter's decision, then the handler, stamped with the
/// limiter's headers.
fn drive<H, A>(
    stage: &mut Pin<&mut Stage<H, A>>,
    counted: &mut Option<crate::ratelimit::Counted>,
    shared: &Shared,
    cx: &mut Context<'_>,
) -> Poll<Response>
where
    H: Future<Output = Response>,
    A: Future<Output = Option<Admission>>,
{
    loop {
        match stage.as_mut().project() {
            StageProj::Refused { response } => {
                return Poll::Ready(response.take().unwrap_or_else(|| {
                    ApiError::Internal(anyhow::anyhow!("request polled after it finished"))
                        .into_response()
                }));
            }
            StageProj::Admitting { admit, handler } => match admit.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Admission::Refused(response))) => {
                    stage.set(Stage::Refused {
                        response: Some(response),
                    });
                }
                Poll::Ready(admitted) => {
                    if let Some(Admission::Admitted(decided)) = admitted {
                        *counted = Some(decided);
                    }
                    match handler.take() {
                        // Not polled yet, so not pinned yet: it may move.
                        Some(handler) => stage.set(Stage::Handling { handler }),
                        None => stage.set(Stage::Refused { response: None }),
                    }
                }
            },
            StageProj::Handling { handler } => {
                let mut response = std::task::ready!(handler.poll(cx));
                if let (Some(gate), Some(counted)) = (&shared.gate, counted.as_ref()) {
                    gate.stamp(counted, response.headers_mut());
                }
                return Poll::Ready(response);
            }
        }
    }
}

/// problem+json, the response headers, metrics and the log line.
fn finish(
    response: Response,
    started: Instant,
    method: &'static str,
    matched: Option<&MatchedPath>,
    request_id: &HeaderValue,
) -> Response {
    let mut response = problemize(response);
    let headers = response.headers_mut();
    add_security_headers(headers);
    headers
        .entry(X_REQUEST_ID)
        .or_insert_with(|| request_id.clone());
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let route = matched.map_or("unmatched", MatchedPath::as_str);
    record(route, method, status, elapsed);
    crate::telemetry::history::HTTP.record(status, elapsed);
    let request_id = request_id.to_str().unwrap_or_default();
    // Whole microseconds: a short number to print ("1.471", not "1.4710210000000001").
    let latency_ms = elapsed.as_micros() as f64 / 1000.0;
    log_request(request_id, method, route, status, latency_ms);
    response
}

/// The request's log line (public for the bench baseline, which logs the same line): `warn` for
/// a server error, else `info`. The message is a plain string field: a format string would
/// reach the line's formatter through `Debug`; the line reads the same either way.
pub fn log_request(request_id: &str, method: &str, route: &str, status: u16, latency_ms: f64) {
    if status >= 500 {
        tracing::warn!(
            message = "request",
            request_id,
            method,
            route,
            status,
            latency_ms
        );
    } else {
        tracing::info!(
            message = "request",
            request_id,
            method,
            route,
            status,
            latency_ms
        );
    }
}

fn panicked() -> Response {
    tracing::error!("handler panicked");
    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

/// What the edge reads from a request's headers, found in one pass over them: a lookup per
/// name (six of them) cost more than the pass over the few headers most requests carry.
struct RequestHeaders {
    /// `Authorization` or `Cookie` is present.
    credentials: bool,
    /// The first `Content-Length`, when it is a number.
    declared_length: Option<u64>,
    /// `Content-Length` or `Transfer-Encoding` is present: the request may have a body.
    body: bool,
    /// `Accept-Encoding` is present: tower-http negotiates the response's encoding.
    accepts_encoding: bool,
    /// The client's `X-Request-Id` when it sent a usable one, else a new UUID v4.
    request_id: HeaderValue,
}

impl RequestHeaders {
    fn read(headers: &HeaderMap) -> Self {
        let (mut credentials, mut chunked, mut accepts_encoding) = (false, false, false);
        let (mut length, mut id) = (None, None);
        for (name, value) in headers {
            if name == header::AUTHORIZATION || name == header::COOKIE {
                credentials = true;
            } else if name == header::CONTENT_LENGTH {
                length.get_or_insert(value);
            } else if name == header::TRANSFER_ENCODING {
                chunked = true;
            } else if name == header::ACCEPT_ENCODING {
                accepts_encoding = true;
            } else if name == X_REQUEST_ID {
                id.get_or_insert(value);
            }
        }
        Self {
            credentials,
            declared_length: length.and_then(|v| v.to_str().ok()?.parse().ok()),
            body: chunked || length.is_some(),
            accepts_encoding,
            request_id: request_id(id),
        }
    }
}

/// What tower-http's compression adds to a response it would have compressed had the client
/// asked: `Vary: accept-encoding`, so a shared cache does not hand this identity body to a
/// client that would take it compressed, or the reverse. The conditions are tower-http's
/// (`DefaultPredicate` and its own checks), written out so they cost no allocation; a test
/// holds them to tower-http's.
fn vary_if_compressible(response: &mut Response) {
    if compressible(response) {
        response
            .headers_mut()
            .append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// Whether tower-http would compress `response` and it does not already vary on the encoding.
/// One pass over its few headers: a lookup by name per header checked cost more than the scan.
fn compressible(response: &Response) -> bool {
    use axum::body::HttpBody;
    let mut content_type: Option<&HeaderValue> = None;
    let mut content_length: Option<&HeaderValue> = None;
    for (name, value) in response.headers() {
        if name == header::CONTENT_ENCODING || name == header::CONTENT_RANGE {
            return false;
        }
        if name == header::VARY && names_encoding(value) {
            return false;
        }
        if name == header::CONTENT_TYPE {
            content_type.get_or_insert(value);
        } else if name == header::CONTENT_LENGTH {
            content_length.get_or_insert(value);
        }
    }
    // Bodies of unknown size count as large, as tower-http's `SizeAbove` counts them.
    let size = response
        .body()
        .size_hint()
        .exact()
        .or_else(|| content_length?.to_str().ok()?.parse().ok());
    if size.is_some_and(|n| n < MIN_COMPRESS as u64) {
        return false;
    }
    let content_type = content_type
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    !(content_type.starts_with("application/grpc")
        || (content_type.starts_with("image/") && !content_type.starts_with("image/svg+xml"))
        || content_type.starts_with("text/event-stream"))
}

fn names_encoding(vary: &HeaderValue) -> bool {
    vary.as_bytes()
        .windows(b"accept-encoding".len())
        .any(|w| w.eq_ignore_ascii_case(b"accept-encoding"))
}

/// `Authorization` and `Cookie` values are marked sensitive, so no `Debug` output shows them.
fn hide_credentials(headers: &mut HeaderMap) {
    for name in [header::AUTHORIZATION, header::COOKIE] {
        // `entry` makes room for an insert first; a request may carry only one of the two.
        if !headers.contains_key(&name) {
            continue;
        }
        if let header::Entry::Occupied(mut entry) = headers.entry(name) {
            for value in entry.iter_mut() {
                value.set_sensitive(true);
            }
        }
    }
}

/// The counter and histogram of one (route, method, status), resolved once per thread:
/// building the label set and looking it up in the registry on every request cost more than
/// the handler of a cached read, and a shared map behind a lock made both worker threads write
/// the same cache line on every request.
struct RouteMetrics {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

#[derive(Hash, PartialEq, Eq)]
struct Series {
    route: Box<str>,
    method: &'static str,
    status: u16,
}

/// A borrowed [`Series`], to look one up without allocating (same fields, same hash).
#[derive(Hash)]
struct SeriesRef<'a> {
    route: &'a str,
    method: &'static str,
    status: u16,
}

impl hashbrown::Equivalent<Series> for SeriesRef<'_> {
    fn equivalent(&self, key: &Series) -> bool {
        self.status == key.status && self.method == key.method && self.route == &*key.route
    }
}

thread_local! {
    /// Route templates are a fixed set, so these maps stay as small as the metric registry.
    static SERIES: RefCell<hashbrown::HashMap<Series, RouteMetrics>> = RefCell::default();
}

static IN_FLIGHT: LazyLock<metrics::Gauge> =
    LazyLock::new(|| metrics::gauge!("hakikisha_http_requests_in_flight"));

/// Counts one request and its latency under (route template, method, status).
fn record(route: &str, method: &'static str, status: u16, elapsed: Duration) {
    let key = SeriesRef {
        route,
        method,
        status,
    };
    SERIES.with_borrow_mut(|series| {
        let handles = match series.get(&key) {
            Some(handles) => handles,
            None => {
                let labels = [
                    ("method", method.to_owned()),
                    ("route", route.to_owned()),
                    ("status", status.to_string()),
                ];
                let handles = RouteMetrics {
                    requests: metrics::counter!("hakikisha_http_requests_total", &labels),
                    duration: metrics::histogram!(
                        "hakikisha_http_request_duration_seconds",
                        &labels
                    ),
                };
                let series_key = Series {
                    route: route.into(),
                    method,
                    status,
                };
                series.entry(series_key).or_insert(handles)
            }
        };
        handles.requests.increment(1);
        handles.duration.record(elapsed.as_secs_f64());
    });
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id: the client's `X-Request-Id` when it sent a usable one (a load balancer's,
/// so logs correlate across hops), else a new UUID v4. Echoed on the response and logged.
fn request_id(given: Option<&HeaderValue>) -> HeaderValue {
    if let Some(id) = given
        && !id.is_empty()
        && id.len() <= 200
        && id.to_str().is_ok()
    {
        return id.clone();
    }
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Turns any error response that is not already problem+json (405 from the router, 413 from
/// the body limit, 503 from the timeout, ...) into RFC 9457 problem+json. HTML is left alone.
fn problemize(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with(PROBLEM_JSON) || content_type.starts_with("text/html") {
        return response;
    }
    let error = match status {
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::NOT_FOUND => ApiError::NotFound("no such resource".into()),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => ApiError::Timeout,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::UnsupportedMediaType("unsupported content type".into())
        }
        _ => {
            let problem = Problem {
                kind: "about:blank".into(),
                title: status.canonical_reason().unwrap_or("Error").into(),
                status: status.as_u16(),
                detail: status.canonical_reason().unwrap_or("Error").into(),
                errors: Vec::new(),
            };
            let (parts, _) = response.into_parts();
            let mut res = problem_response(status, &problem, None);
            copy_headers(&parts.headers, &mut res);
            return res;
        }
    };
    let (parts, _) = response.into_parts();
    let mut res = error.into_response();
    *res.status_mut() = status;
    copy_headers(&parts.headers, &mut res);
    res
}

/// Keeps headers such as `Allow` and `Retry-After` set by the layer that produced the error.
fn copy_headers(from: &axum::http::HeaderMap, to: &mut Response<Body>) {
    for (name, value) in from {
        if name != header::CONTENT_TYPE
            && name != header::CONTENT_LENGTH
            && !to.headers().contains_key(name)
        {
            to.headers_mut().insert(name.clone(), value.clone());
        }
    }
}

/// The defaults of Helmet (the seeds' security middleware), set unless a handler chose its own.
const SECURITY_HEADERS: [(HeaderName, HeaderValue); 12] = [
    (
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(
            "default-src 'self'; base-uri 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; img-src 'self' data:; object-src 'none'; script-src 'self'; style-src 'self'",
        ),
    ),
    (
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    ),
    (
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    ),
    (
        HeaderName::from_static("origin-agent-cluster"),
        HeaderValue::from_static("?1"),
    ),
    (
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    ),
    (
        HeaderName::from_static("strict-transport-security"),
        HeaderValue::from_static("max-age=31536000; includeSubDomains"),
    ),
    (
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    ),
    (
        HeaderName::from_static("x-dns-prefetch-control"),
        HeaderValue::from_static("off"),
    ),
    (
        HeaderName::from_static("x-download-options"),
        HeaderValue::from_static("noopen"),
    ),
    (
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    ),
    (
        HeaderName::from_static("x-permitted-cross-domain-policies"),
        HeaderValue::from_static("none"),
    ),
    (
        HeaderName::from_static("x-xss-protection"),
        HeaderValue::from_static("0"),
    ),
];

/// The security headers as one map, cloned per response: cheaper than inserting twelve
/// headers (each hashed, some growing the map) into every response.
static SECURITY: LazyLock<HeaderMap> = LazyLock::new(|| {
    // Room for what handlers and the edge add, so a response does not grow it again.
    let mut headers = HeaderMap::with_capacity(SECURITY_HEADERS.len() + 12);
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, value);
    }
    headers
});

/// A response with the security headers already in place, so [`add_security_headers`] has
/// nothing to merge: for the answers served most (JSON bodies, cached reads, problems). Its
/// `Content-Type` and the handler's own headers go in after them, and a security header the
/// handler sets replaces the default, as in the merge.
pub fn secured(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: impl Into<Body>,
) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    *headers = SECURITY.clone();
    if let Some(content_type) = content_type {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

/// Whether `headers` began as the security headers ([`secured`]): its first entries carry their
/// names, in order. Setting a name keeps its place; removing one moves the last entry into the
/// gap (or shortens the map), which this notices.
fn starts_secured(headers: &HeaderMap) -> bool {
    // A name copied from the defaults still points at the same static text (a map keeps its
    // key when a value replaces another), so the comparison is nearly always one of pointers.
    let same = |ours: &HeaderName, theirs: &HeaderName| {
        std::ptr::eq(ours.as_str(), theirs.as_str()) || ours == theirs
    };
    headers.keys_len() >= SECURITY_HEADERS.len()
        && headers
            .keys()
            .zip(SECURITY.keys())
            .all(|(ours, theirs)| same(ours, theirs))
}

/// Sets the security headers a handler has not set itself (public for the bench baseline).
pub fn add_security_headers(headers: &mut HeaderMap) {
    if starts_secured(headers) {
        return;
    }
    let own = std::mem::replace(headers, SECURITY.clone());
    // The handler's headers win over the defaults; a repeated name keeps all its values.
    let mut last: Option<HeaderName> = None;
    for (name, value) in own {
        match name {
            Some(name) => {
                headers.insert(name.clone(), value);
                last = Some(name);
            }
            None => {
                if let Some(name) = &last {
                    headers.append(name.clone(), value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a handler sets in the two tests below: a content type, its own policy, and a
    /// repeated name.
    fn set_handler_headers(headers: &mut HeaderMap) {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'"),
        );
        headers.append(header::VARY, HeaderValue::from_static("authorization"));
        headers.append(header::VARY, HeaderValue::from_static("cookie"));
    }

    /// The handler's choices kept (each value of a repeated name), every other default set,
    /// nothing twice.
    fn assert_handler_wins(headers: &HeaderMap) {
        assert_eq!(headers[header::CONTENT_TYPE], "text/html");
        let policies: Vec<_> = headers
            .get_all(header::CONTENT_SECURITY_POLICY)
            .iter()
            .collect();
        assert_eq!(policies, ["default-src 'none'"]);
        let vary: Vec<_> = headers.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["authorization", "cookie"]);
        for (name, value) in SECURITY_HEADERS.iter().skip(1) {
            assert_eq!(headers.get(name), Some(value), "{name}");
        }
        assert_eq!(headers.len(), SECURITY_HEADERS.len() + 3);
    }

    #[test]
    fn the_handler_s_own_headers_win_over_the_security_defaults() {
        let mut headers = HeaderMap::new();
        set_handler_headers(&mut headers);
        add_security_headers(&mut headers);
        assert_handler_wins(&headers);
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret-token"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("session=c00kie-one"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("other=c00kie-two"));
        assert!(RequestHeaders::read(&headers).credentials);
        hide_credentials(&mut headers);
        assert!(headers.values().all(HeaderValue::is_sensitive));
        let shown = format!("{headers:?}");
        for secret in ["s3cret-token", "c00kie-one", "c00kie-two"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        // Only one of the two: the other is not added.
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        hide_credentials(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers[header::COOKIE].is_sensitive());
    }

    #[test]
    fn the_request_s_headers_are_read_in_one_pass() {
        let bare = RequestHeaders::read(&HeaderMap::new());
        assert!(!bare.credentials && !bare.body && !bare.accepts_encoding);
        assert_eq!(bare.declared_length, None);
        assert_eq!(bare.request_id.len(), 36, "a new UUID");

        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("example.com"));
        headers.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        headers.append(X_REQUEST_ID, HeaderValue::from_static("trace-1"));
        headers.append(X_REQUEST_ID, HeaderValue::from_static("trace-2"));
        let read = RequestHeaders::read(&headers);
        assert!(read.credentials && read.body && read.accepts_encoding);
        assert_eq!(read.declared_length, Some(12), "the first Content-Length");
        assert_eq!(read.request_id, "trace-1", "the first X-Request-Id");

        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(X_REQUEST_ID, HeaderValue::from_static(""));
        let read = RequestHeaders::read(&headers);
        assert!(read.credentials && read.body && !read.accepts_encoding);
        assert_eq!(read.declared_length, None);
        assert_eq!(read.request_id.len(), 36, "an empty id is replaced");

        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("lots"));
        headers.insert(
            X_REQUEST_ID,
            HeaderValue::from_str(&"x".repeat(201)).unwrap(),
        );
        let read = RequestHeaders::read(&headers);
        assert!(read.body && !read.credentials);
        assert_eq!(read.declared_length, None, "not a number");
        assert_eq!(
            read.request_id.len(),
            36,
            "an id over 200 bytes is replaced"
        );
    }

    #[test]
    fn a_secured_response_keeps_the_handler_s_choices_and_every_default() {
        let mut response = secured(StatusCode::OK, None, "{}");
        let headers = response.headers_mut();
        set_handler_headers(headers);
        assert!(starts_secured(headers));
        let before = headers.clone();
        add_security_headers(headers);
        assert_eq!(*headers, before, "taken as it is");
        assert_handler_wins(headers);
    }

    #[test]
    fn a_default_removed_from_a_secured_response_is_set_again() {
        // A removal from the middle moves the last entry into the gap; removing the last one
        // shortens the map. Either way the map no longer starts as the defaults do.
        for (removed, extra) in [
            (header::X_FRAME_OPTIONS, true),
            (header::X_XSS_PROTECTION, false),
        ] {
            let mut response = secured(StatusCode::OK, None, "{}");
            let headers = response.headers_mut();
            if extra {
                headers.insert(header::ETAG, HeaderValue::from_static("\"t\""));
            }
            headers.remove(&removed);
            assert!(!starts_secured(headers), "{removed}");
            add_security_headers(headers);
            for (name, value) in &SECURITY_HEADERS {
                assert_eq!(headers.get(name), Some(value), "{name}");
            }
            assert_eq!(headers.contains_key(header::ETAG), extra);
        }
        // A plain map holding the defaults in another order is merged, not taken as is.
        let mut headers = HeaderMap::new();
        for (name, value) in SECURITY_HEADERS.iter().rev() {
            headers.insert(name.clone(), value.clone());
        }
        assert!(!starts_secured(&headers));
        assert!(starts_secured(&SECURITY));
    }

    fn varies_on_encoding(headers: &HeaderMap) -> bool {
        headers.get_all(header::VARY).iter().any(names_encoding)
    }

    /// A body whose size is not known up front (as a stream's).
    struct Unsized;

    impl hyper::body::Body for Unsized {
        type Data = axum::body::Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Infallible>>> {
            Poll::Ready(None)
        }
    }

    #[test]
    fn vary_is_added_exactly_where_tower_http_would_compress() {
        // Content type, body size (`None`: unknown), other headers.
        type Case = (
            &'static str,
            Option<usize>,
            &'static [(&'static str, &'static str)],
        );
        let cases: &[Case] = &[
            ("application/json", Some(100), &[]),
            ("application/json", Some(MIN_COMPRESS - 1), &[]),
            ("application/json", Some(MIN_COMPRESS), &[]),
            ("application/json", None, &[]),
            ("application/json", None, &[("content-length", "10")]),
            ("application/json", None, &[("content-length", "2000")]),
            ("application/json", Some(2000), &[("content-length", "10")]),
            ("image/png", Some(5000), &[]),
            ("image/svg+xml", Some(5000), &[]),
            ("text/event-stream", Some(5000), &[]),
            ("application/grpc", Some(5000), &[]),
            ("text/html", Some(5000), &[("content-encoding", "gzip")]),
            (
                "text/html",
                Some(5000),
                &[("content-range", "bytes 0-10/20")],
            ),
            ("text/html", Some(5000), &[("vary", "Accept-Encoding")]),
            (
                "text/html",
                Some(5000),
                &[("vary", "cookie, accept-encoding")],
            ),
            ("text/html", Some(5000), &[("vary", "authorization")]),
            (
                "text/html",
                Some(5000),
                &[("vary", "authorization"), ("vary", "accept-encoding")],
            ),
        ];
        for (content_type, size, extra) in cases {
            let body = match size {
                Some(size) => Body::from(vec![b'x'; *size]),
                None => Body::new(Unsized),
            };
            let mut response = Response::new(body);
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            for (name, value) in *extra {
                headers.append(*name, HeaderValue::from_static(value));
            }
            let tower_http_would = !response.headers().contains_key(header::CONTENT_ENCODING)
                && !response.headers().contains_key(header::CONTENT_RANGE)
                && compressible_predicate().should_compress(&response);
            let had_it = varies_on_encoding(response.headers());
            vary_if_compressible(&mut response);
            let vary: Vec<_> = response.headers().get_all(header::VARY).iter().collect();
            let added = vary.iter().filter(|v| **v == "accept-encoding").count()
                - usize::from(extra.contains(&("vary", "accept-encoding")));
            let case = format!("{content_type} {size:?} {extra:?}");
            assert_eq!(added, usize::from(tower_http_would && !had_it), "{case}");
            assert!(
                !tower_http_would || varies_on_encoding(response.headers()),
                "{case}"
            );
        }
    }

    #[test]
    fn metric_handles_are_kept_per_route_method_and_status() {
        let registry = crate::telemetry::metrics_handle().expect("recorder");
        let ms = Duration::from_millis(1);
        for (method, status) in [("GET", 200), ("GET", 200), ("GET", 404), ("POST", 200)] {
            record("/test/handles", method, status, ms);
        }
        let text = registry.render();
        for series in [
            r#"hakikisha_http_requests_total{method="GET",route="/test/handles",status="200"} 2"#,
            r#"hakikisha_http_requests_total{method="GET",route="/test/handles",status="404"} 1"#,
            r#"hakikisha_http_requests_total{method="POST",route="/test/handles",status="200"} 1"#,
            r#"hakikisha_http_request_duration_seconds_count{method="GET",route="/test/handles",status="200"} 2"#,
        ] {
            assert!(text.contains(series), "{series} missing from {text}");
        }
        // The counts above would be the same without the cache: check the handles are kept,
        // one per (method, status), and that a repeat finds them instead of adding another.
        let kept = || {
            let mut kept: Vec<_> = SERIES.with_borrow(|s| {
                s.keys()
                    .filter(|k| &*k.route == "/test/handles")
                    .map(|k| (k.method, k.status))
                    .collect()
            });
            kept.sort();
            kept
        };
        assert_eq!(kept(), [("GET", 200), ("GET", 404), ("POST", 200)]);
        record("/test/handles", "GET", 200, ms);
        assert_eq!(kept().len(), 3);
    }
}
