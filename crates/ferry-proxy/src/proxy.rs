//! hyper's path: a connection the fast path handed over (or every
//! connection, with the fast path off) served by hyper's server, each
//! request forwarded through hyper's client: pick and retries, the answers
//! the proxy gives itself (400, 405, 408, 429, 502, 503, 504), streamed
//! bodies both ways, and `Upgrade` (e.g. WebSocket) pass-through.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::access_log::Entry;
use crate::admit::{RATE_LIMITED, bad_request, rate_limited};
use crate::body::{Lease, ProxyBody};
use crate::client::ConnCtx;
use crate::failover::{is_replayable, pooled_or_connect, upstream_failed};
use crate::headers::{
    TRACEPARENT, X_FERRY_REVISION, X_REQUEST_ID, ensure_request_id, ensure_traceparent,
    set_forwarding, strip_hop_by_hop, wants_upgrade,
};
use crate::net::ClientIo;
use crate::pending_log::PendingLog;
use crate::upload::{ReqBody, UploadState};
use crate::upstream::{InFlight, Upstream};

/// Serve the rest of a connection with hyper; `read`: bytes already read.
pub(crate) async fn serve_with_hyper(
    ctx: Arc<ConnCtx>,
    stream: TcpStream,
    read: Vec<u8>,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let config = Arc::clone(&ctx.config);
    let io = TokioIo::new(ClientIo::new(stream, read, config.options.send_timeout));
    let service = service_fn(move |req| {
        let ctx = Arc::clone(&ctx);
        async move {
            let mut resp = proxy(Arc::clone(&ctx), req).await;
            // Retiring (or stopping): tell the client to close after this
            // response, and hyper closes the connection once it is sent
            // (a 101 keeps its `Connection: upgrade`).
            if let Ok(resp) = resp.as_mut()
                && ctx.shared().closing()
                && resp.status() != StatusCode::SWITCHING_PROTOCOLS
            {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    });
    let conn = config.builder.serve_connection(io, service).with_upgrades();
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
}

/// Handle one client request.
async fn proxy(
    ctx: Arc<ConnCtx>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let shared = ctx.shared();
    let config = &*ctx.config;
    let on_upgrade = wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    let upgrade_to = match on_upgrade {
        Some(_) => parts.headers.get(header::UPGRADE).cloned(),
        None => None,
    };
    strip_hop_by_hop(&mut parts.headers);
    // One canonical Content-Length, as the fast path sends it (hyper keeps
    // the client's spelling, `007`).
    if parts.headers.contains_key(header::CONTENT_LENGTH)
        && let Some(len) = incoming.size_hint().exact()
    {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let request_id = ensure_request_id(&mut parts.headers);
    ensure_traceparent(&mut parts.headers);
    let log = config.log.as_ref().map(|_| PendingLog {
        entry: Box::new(Entry {
            time: SystemTime::now(),
            client: ctx.client_addr(&parts.headers),
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            status: StatusCode::OK,
            revision: None,
            instance: None,
            duration: Duration::ZERO,
            bytes: 0,
            request_id: request_id.clone(),
            traceparent: parts.headers.get(TRACEPARENT).cloned(),
            user_agent: parts.headers.get(header::USER_AGENT).cloned(),
        }),
        start,
        config: Arc::clone(&ctx.config),
    });
    let unrouted = |status| shared.counters.unrouted.record(status, start.elapsed());
    if let Some(body) = bad_request(&parts) {
        unrouted(StatusCode::BAD_REQUEST);
        let mut resp = local_response(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(body),
            request_id,
            log,
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(resp);
    }
    if parts.method == Method::CONNECT {
        unrouted(StatusCode::METHOD_NOT_ALLOWED);
        return Ok(local_response(
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(b"CONNECT is not supported\n"),
            request_id,
            log,
        ));
    }
    // Before the rate limit and routing, which read headers as the upstream
    // will see them (a client cannot pick its key by forging them).
    set_forwarding(&mut parts.headers, &ctx.client_ip, ctx.trusted);
    let client = log.as_ref().map(|log| log.entry.client);
    if let Some(secs) = rate_limited(&ctx, &parts.headers, client, start) {
        unrouted(StatusCode::TOO_MANY_REQUESTS);
        let mut resp = local_response(
            StatusCode::TOO_MANY_REQUESTS,
            Bytes::from_static(RATE_LIMITED),
            request_id,
            log,
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Ok(resp);
    }
    to_origin_form(&mut parts);
    parts.version = Version::HTTP_11;
    if let Some(protocol) = upgrade_to {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol);
    }

    let in_flight = match shared.acquire(&parts.headers, &[]) {
        Ok(in_flight) => in_flight,
        Err(no_route) => {
            let (status, body) = no_route.pin_refusal().unwrap_or_else(|| {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    shared.no_instance_body.clone(),
                )
            });
            unrouted(status);
            return Ok(local_response(status, body, request_id, log));
        }
    };
    let (body, upload) = ReqBody::new(incoming, config.options.client_body_timeout);
    let replayable = body.is_empty() && is_replayable(parts.method.as_str(), &parts.headers);
    let req = Request::from_parts(parts, body);
    let exchange = Exchange {
        ctx: &ctx,
        start,
        request_id,
        upload,
        replayable,
        on_upgrade,
        log,
    };
    Ok(exchange.run(in_flight, req).await)
}

/// One request's trip through the upstreams.
struct Exchange<'a> {
    ctx: &'a Arc<ConnCtx>,
    start: Instant,
    request_id: HeaderValue,
    upload: Option<Arc<UploadState>>,
    /// Body-less and safe to send twice: may be replayed once if a reused
    /// pooled connection turns out to have been closed by the upstream, and
    /// once on another upstream if an instance closes a new connection
    /// without answering.
    replayable: bool,
    /// The client asked for a protocol upgrade (e.g. WebSocket).
    on_upgrade: Option<OnUpgrade>,
    log: Option<PendingLog>,
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
        let options = &self.ctx.config.options;
        let mut tried: Vec<Arc<Upstream>> = Vec::new();
        let mut fresh_only = false;
        // Already moved once to another upstream after an instance closed
        // the connection without answering.
        let mut moved = false;
        loop {
            let found = pooled_or_connect(
                &self.ctx.shared().service,
                in_flight,
                fresh_only,
                Upstream::checkout,
                |upstream| async move { upstream.connect(options.connect_timeout).await },
                |current| self.next_upstream(current, &mut tried, req.headers()),
            )
            .await;
            let (mut sender, reused);
            (in_flight, sender, reused) = match found {
                Ok(found) => found,
                Err(last) => return self.upstream_error(last, StatusCode::BAD_GATEWAY),
            };
            let replay = (self.replayable && (reused || !moved)).then(|| clone_head(&req));
            let sent = send(
                &mut sender,
                req,
                options.response_header_timeout,
                self.upload.as_deref(),
            )
            .await;
            match sent {
                Ok(resp) => {
                    in_flight.upstream().exchange_succeeded();
                    return self.upstream_response(resp, in_flight, sender);
                }
                Err(SendFailure::NotSent(back)) => {
                    req = *back;
                    drop(sender);
                    if reused {
                        // A pooled connection went away: retry on a new one.
                        fresh_only = true;
                        continue;
                    }
                    tracing::warn!(
                        service = %self.ctx.shared().service,
                        instance = in_flight.upstream().instance_id(),
                        "upstream connection closed before the request was sent"
                    );
                    match self.next_upstream(in_flight, &mut tried, req.headers()) {
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
                        req = again;
                        if reused {
                            tracing::debug!(error = %err, "pooled connection was stale; replaying");
                            fresh_only = true;
                            continue;
                        }
                        // The instance closed (or reset) a new connection
                        // after the request was written, before answering:
                        // it may be dying. Once, on another untried upstream.
                        tracing::warn!(
                            service = %self.ctx.shared().service,
                            instance = in_flight.upstream().instance_id(),
                            error = %err,
                            "upstream closed the connection without answering; retrying on another"
                        );
                        match self.next_upstream(in_flight, &mut tried, req.headers()) {
                            Ok(next) => {
                                in_flight = next;
                                fresh_only = false;
                                moved = true;
                                continue;
                            }
                            Err(last) => {
                                return self.upstream_error(last, StatusCode::BAD_GATEWAY);
                            }
                        }
                    }
                    if err.is_user() {
                        // Reading the client's request body failed.
                        tracing::debug!(error = %err, "client request body failed");
                        let timed_out = self.upload.as_ref().is_some_and(|u| u.timed_out());
                        let (status, body): (_, &'static [u8]) = if timed_out {
                            (
                                StatusCode::REQUEST_TIMEOUT,
                                b"request body timed out: the client paused too long\n",
                            )
                        } else {
                            (StatusCode::BAD_REQUEST, b"request body could not be read\n")
                        };
                        in_flight.upstream().record(status, self.start.elapsed());
                        let mut resp = local_response(
                            status,
                            Bytes::from_static(body),
                            self.request_id,
                            self.log,
                        );
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        return resp;
                    }
                    tracing::warn!(
                        service = %self.ctx.shared().service,
                        instance = in_flight.upstream().instance_id(),
                        error = %err,
                        "upstream request failed"
                    );
                    return self.upstream_error(in_flight, StatusCode::BAD_GATEWAY);
                }
                Err(SendFailure::Timeout) => {
                    tracing::warn!(
                        service = %self.ctx.shared().service,
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
        headers: &HeaderMap,
    ) -> Result<InFlight, InFlight> {
        self.ctx.shared().next_upstream(current, tried, headers)
    }

    fn upstream_response(
        mut self,
        resp: Response<Incoming>,
        in_flight: InFlight,
        sender: SendRequest<ReqBody>,
    ) -> Response<ProxyBody> {
        let upstream = in_flight.upstream();
        let status = resp.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            drop(sender);
            return match self.on_upgrade.take() {
                Some(client) => self.upgrade(resp, in_flight, client),
                None => {
                    tracing::warn!(
                        service = %self.ctx.shared().service,
                        instance = upstream.instance_id(),
                        "upstream switched protocols without being asked"
                    );
                    self.upstream_error(in_flight, StatusCode::BAD_GATEWAY)
                }
            };
        }
        upstream.record(status, self.start.elapsed());
        if let Some(log) = self.log.as_mut() {
            log.entry.status = status;
            log.served_by(upstream);
        }
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
            max_idle: self.ctx.config.options.max_idle_per_upstream,
            log: self.log,
        };
        Response::from_parts(parts, ProxyBody::upstream(body, lease))
    }

    /// The upstream accepted the upgrade: answer the client with its 101 and
    /// join the two connections once both sides have switched.
    fn upgrade(
        mut self,
        mut resp: Response<Incoming>,
        in_flight: InFlight,
        client: OnUpgrade,
    ) -> Response<ProxyBody> {
        let upstream = Arc::clone(in_flight.upstream());
        upstream.record(StatusCode::SWITCHING_PROTOCOLS, self.start.elapsed());
        let upstream_side = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        let protocol = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(protocol) = protocol {
            parts.headers.insert(header::UPGRADE, protocol);
        }
        parts
            .headers
            .insert(X_FERRY_REVISION, upstream.revision_header().clone());
        parts.headers.insert(X_REQUEST_ID, self.request_id);
        if let Some(log) = self.log.as_mut() {
            log.entry.status = StatusCode::SWITCHING_PROTOCOLS;
            log.served_by(&upstream);
        }
        let close = upstream.close_signal();
        tokio::spawn(tunnel(
            client,
            upstream_side,
            in_flight,
            close,
            Arc::clone(self.ctx),
            self.log,
        ));
        Response::from_parts(parts, ProxyBody::full(Bytes::new()))
    }

    fn upstream_error(self, in_flight: InFlight, status: StatusCode) -> Response<ProxyBody> {
        let mut log = self.log;
        let body = upstream_failed(in_flight, status, self.start.elapsed(), &mut log);
        local_response(status, Bytes::from_static(body), self.request_id, log)
    }
}

/// Copy bytes both ways between an upgraded client connection and its
/// upstream until either side closes or the upstream is closed by
/// `Upstream::close_all`. The request stays counted in `in_flight` (and the
/// client connection in `max_connections`) meanwhile.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    in_flight: InFlight,
    mut close: watch::Receiver<u64>,
    ctx: Arc<ConnCtx>,
    log: Option<PendingLog>,
) {
    let counters = &ctx.shared().counters;
    counters.upgraded.fetch_add(1, Ordering::Relaxed);
    let copy = async {
        let (client, upstream) =
            tokio::try_join!(client, upstream).map_err(|e| io::Error::other(e.to_string()))?;
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
    };
    let mut bytes = 0;
    tokio::select! {
        res = copy => match res {
            Ok((_, down)) => bytes = down,
            Err(err) => {
                tracing::debug!(error = %err, "upgraded connection ended with error");
            }
        },
        _ = close.changed() => {
            tracing::debug!(
                instance = in_flight.upstream().instance_id(),
                "closing an upgraded connection: its upstream is being stopped"
            );
        }
    }
    counters.upgraded.fetch_sub(1, Ordering::Relaxed);
    drop(in_flight);
    if let Some(mut log) = log {
        log.entry.bytes = bytes;
        log.send();
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

fn clone_head(req: &Request<ReqBody>) -> Request<ReqBody> {
    let mut copy = Request::new(ReqBody::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Rewrite an absolute-form request target to origin-form (path + query),
/// with `Host` made from its authority: RFC 9112 3.2.2, a proxy ignores the
/// `Host` received with an absolute-form target and generates one from the
/// target (otherwise the upstream and whatever read the target before us
/// would disagree on the host). A request that has no `Host` then (HTTP/1.0
/// may omit it) gets an empty one, as the HTTP/1.1 request sent upstream
/// must have one (RFC 9112 3.2).
fn to_origin_form(parts: &mut http::request::Parts) {
    if let Some(authority) = parts.uri.authority() {
        // `bad_request` let through only http(s) targets without userinfo.
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(header::HOST, host);
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
    if !parts.headers.contains_key(header::HOST) {
        parts
            .headers
            .insert(header::HOST, HeaderValue::from_static(""));
    }
}

fn local_response(
    status: StatusCode,
    body: Bytes,
    request_id: HeaderValue,
    log: Option<PendingLog>,
) -> Response<ProxyBody> {
    let body = match log {
        Some(mut log) => {
            log.entry.status = status;
            ProxyBody::full_logged(body, log)
        }
        None => ProxyBody::full(body),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(X_REQUEST_ID, request_id);
    resp
}
