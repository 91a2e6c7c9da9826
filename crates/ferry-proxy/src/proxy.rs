//! The accept loop, client connections and request forwarding.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::Shared;
use crate::body::{Lease, ProxyBody, ReqBody, UploadState};
use crate::headers::{
    X_FERRY_REVISION, X_REQUEST_ID, ensure_request_id, set_forwarding, strip_hop_by_hop,
};
use crate::upstream::{InFlight, Upstream};

/// Accept connections until the listener is closed by `shutdown()`.
pub(crate) async fn accept_loop(shared: Arc<Shared>) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper starts this timer whenever it waits for a request head, so it
        // is both the keep-alive idle timeout and the header read timeout.
        .header_read_timeout(shared.options.idle_timeout)
        .keep_alive(true);
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            res = poll_fn(|cx| shared.poll_accept(cx)) => res,
        };
        match accepted {
            Ok(Some((stream, peer))) => serve(&shared, &builder, stream, peer, shutdown.clone()),
            Ok(None) => break,
            Err(err) => {
                tracing::warn!(service = %shared.service, error = %err, "accept failed");
                if !matches!(
                    err.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    tracing::debug!(service = %shared.service, "proxy listener closed");
}

/// Per client connection state shared by its requests.
struct ConnCtx {
    shared: Arc<Shared>,
    /// The client's IP, formatted once per connection for `X-Forwarded-For`.
    client_ip: HeaderValue,
}

fn serve(
    shared: &Arc<Shared>,
    builder: &http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let ip = peer.ip().to_canonical().to_string();
    let client_ip = HeaderValue::from_maybe_shared(Bytes::from(ip))
        .expect("an IP address is a valid header value");
    let ctx = Arc::new(ConnCtx {
        shared: Arc::clone(shared),
        client_ip,
    });
    let service = service_fn(move |req| proxy(Arc::clone(&ctx), req));
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::spawn(async move {
        let mut conn = pin!(conn);
        let finished = tokio::select! {
            res = conn.as_mut() => Some(res),
            _ = shutdown.wait_for(|stop| *stop) => None,
        };
        let res = match finished {
            Some(res) => res,
            None => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(err) = res {
            tracing::debug!(%peer, error = %err, "client connection ended with error");
        }
    });
}

/// Handle one client request.
async fn proxy(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let shared = &*ctx.shared;
    let (mut parts, incoming) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let request_id = ensure_request_id(&mut parts.headers);
    if parts.method == Method::CONNECT {
        return Ok(local_response(
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(b"CONNECT is not supported\n"),
            request_id,
        ));
    }
    set_forwarding(&mut parts.headers, &ctx.client_ip);
    to_origin_form(&mut parts);
    parts.version = Version::HTTP_11;

    let Some(in_flight) = shared.acquire(&[]) else {
        return Ok(local_response(
            StatusCode::SERVICE_UNAVAILABLE,
            shared.no_instance_body.clone(),
            request_id,
        ));
    };
    let (body, upload) = ReqBody::new(incoming);
    let replayable = body.is_empty() && is_replayable(&parts);
    let req = Request::from_parts(parts, body);
    let exchange = Exchange {
        shared,
        start,
        request_id,
        upload,
        replayable,
    };
    Ok(exchange.run(in_flight, req).await)
}

/// One request's trip through the upstreams.
struct Exchange<'a> {
    shared: &'a Shared,
    start: Instant,
    request_id: HeaderValue,
    upload: Option<Arc<UploadState>>,
    /// Body-less and safe to send twice: may be replayed once if a reused
    /// pooled connection turns out to have been closed by the upstream.
    replayable: bool,
}

enum SendFailure {
    /// The request was not written; here it is back.
    NotSent(Box<Request<ReqBody>>),
    /// The request may have reached the upstream.
    Failed(hyper::Error),
    /// No response head within `response_header_timeout`.
    Timeout,
}

impl Exchange<'_> {
    async fn run(self, mut in_flight: InFlight, mut req: Request<ReqBody>) -> Response<ProxyBody> {
        let options = &self.shared.options;
        let mut tried: Vec<Arc<Upstream>> = Vec::new();
        let mut fresh_only = false;
        loop {
            let upstream = in_flight.upstream();
            let pooled = if fresh_only {
                None
            } else {
                upstream.checkout()
            };
            let reused = pooled.is_some();
            let mut sender = match pooled {
                Some(sender) => sender,
                None => match upstream.connect(options.connect_timeout).await {
                    Ok(sender) => sender,
                    Err(err) => {
                        tracing::warn!(
                            service = %self.shared.service,
                            instance = upstream.instance_id(),
                            addr = %upstream.addr(),
                            error = %err,
                            "cannot connect to upstream"
                        );
                        match self.next_upstream(in_flight, &mut tried) {
                            Ok(next) => {
                                in_flight = next;
                                fresh_only = false;
                                continue;
                            }
                            Err(last) => return self.upstream_error(last, StatusCode::BAD_GATEWAY),
                        }
                    }
                },
            };
            let replay = (reused && self.replayable).then(|| clone_head(&req));
            let sent = send(
                &mut sender,
                req,
                options.response_header_timeout,
                self.upload.as_deref(),
            )
            .await;
            match sent {
                Ok(resp) => return self.upstream_response(resp, in_flight, sender),
                Err(SendFailure::NotSent(back)) => {
                    req = *back;
                    drop(sender);
                    if reused {
                        // A pooled connection went away: retry on a new one.
                        fresh_only = true;
                        continue;
                    }
                    tracing::warn!(
                        service = %self.shared.service,
                        instance = in_flight.upstream().instance_id(),
                        "upstream connection closed before the request was sent"
                    );
                    match self.next_upstream(in_flight, &mut tried) {
                        Ok(next) => {
                            in_flight = next;
                            fresh_only = false;
                        }
                        Err(last) => return self.upstream_error(last, StatusCode::BAD_GATEWAY),
                    }
                }
                Err(SendFailure::Failed(err)) => {
                    drop(sender);
                    if let Some(again) = replay
                        && is_stale_connection(&err)
                    {
                        tracing::debug!(error = %err, "pooled connection was stale; replaying");
                        req = again;
                        fresh_only = true;
                        continue;
                    }
                    if err.is_user() {
                        // Reading the client's request body failed.
                        tracing::debug!(error = %err, "client request body failed");
                        in_flight
                            .upstream()
                            .stats()
                            .record(StatusCode::BAD_REQUEST, self.start.elapsed());
                        return local_response(
                            StatusCode::BAD_REQUEST,
                            Bytes::from_static(b"request body could not be read\n"),
                            self.request_id,
                        );
                    }
                    tracing::warn!(
                        service = %self.shared.service,
                        instance = in_flight.upstream().instance_id(),
                        error = %err,
                        "upstream request failed"
                    );
                    return self.upstream_error(in_flight, StatusCode::BAD_GATEWAY);
                }
                Err(SendFailure::Timeout) => {
                    tracing::warn!(
                        service = %self.shared.service,
                        instance = in_flight.upstream().instance_id(),
                        "upstream response header timeout"
                    );
                    return self.upstream_error(in_flight, StatusCode::GATEWAY_TIMEOUT);
                }
            }
        }
    }

    /// Give up on the current upstream and move to the next untried one.
    /// `Err` hands back the current one when none is left.
    fn next_upstream(
        &self,
        current: InFlight,
        tried: &mut Vec<Arc<Upstream>>,
    ) -> Result<InFlight, InFlight> {
        tried.push(Arc::clone(current.upstream()));
        match self.shared.acquire(tried) {
            Some(next) => Ok(next),
            None => Err(current),
        }
    }

    fn upstream_response(
        self,
        resp: Response<Incoming>,
        in_flight: InFlight,
        sender: SendRequest<ReqBody>,
    ) -> Response<ProxyBody> {
        let upstream = in_flight.upstream();
        upstream.stats().record(resp.status(), self.start.elapsed());
        let (mut parts, body) = resp.into_parts();
        // hyper downgrades to HTTP/1.0 itself for HTTP/1.0 clients.
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(X_FERRY_REVISION, upstream.revision_header().clone());
        parts.headers.insert(X_REQUEST_ID, self.request_id);
        let lease = Lease {
            in_flight,
            sender,
            max_idle: self.shared.options.max_idle_per_upstream,
        };
        Response::from_parts(parts, ProxyBody::upstream(body, lease))
    }

    fn upstream_error(self, in_flight: InFlight, status: StatusCode) -> Response<ProxyBody> {
        in_flight
            .upstream()
            .stats()
            .record_upstream_error(status, self.start.elapsed());
        drop(in_flight);
        let body: &'static [u8] = if status == StatusCode::GATEWAY_TIMEOUT {
            b"gateway timeout: the upstream did not answer in time\n"
        } else {
            b"bad gateway: no upstream could serve the request\n"
        };
        local_response(status, Bytes::from_static(body), self.request_id)
    }
}

/// Send `req` on `sender` and wait for the response head. The timeout counts
/// from when the request body (if any) has been fully handed to the connection.
async fn send(
    sender: &mut SendRequest<ReqBody>,
    req: Request<ReqBody>,
    timeout: Duration,
    upload: Option<&UploadState>,
) -> Result<Response<Incoming>, SendFailure> {
    let mut response = pin!(sender.try_send_request(req));
    let mut timer = pin!(tokio::time::sleep(timeout));
    poll_fn(|cx| {
        if let Poll::Ready(res) = response.as_mut().poll(cx) {
            return Poll::Ready(res.map_err(|mut err| match err.take_message() {
                Some(req) => SendFailure::NotSent(Box::new(req)),
                None => SendFailure::Failed(err.into_error()),
            }));
        }
        loop {
            ready!(timer.as_mut().poll(cx));
            let now = Instant::now();
            let deadline = match upload.map(UploadState::done_at) {
                // Still uploading: the clock has not started yet.
                Some(None) => now + timeout,
                Some(Some(done)) if done + timeout > now => done + timeout,
                _ => return Poll::Ready(Err(SendFailure::Timeout)),
            };
            timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(deadline));
        }
    })
    .await
}

/// Errors that mean a reused keep-alive connection had been closed by the
/// upstream before it could answer.
fn is_stale_connection(err: &hyper::Error) -> bool {
    if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            );
        }
        source = cause.source();
    }
    false
}

fn is_replayable(parts: &http::request::Parts) -> bool {
    matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) || parts.headers.contains_key("idempotency-key")
}

fn clone_head(req: &Request<ReqBody>) -> Request<ReqBody> {
    let mut copy = Request::new(ReqBody::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Rewrite an absolute-form request target to origin-form (path + query).
fn to_origin_form(parts: &mut http::request::Parts) {
    if parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
        return;
    }
    if !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::from(path);
}

fn local_response(status: StatusCode, body: Bytes, request_id: HeaderValue) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(X_REQUEST_ID, request_id);
    resp
}
