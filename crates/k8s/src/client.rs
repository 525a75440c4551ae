//! The Kubernetes client's connection stack: kube's own, plus TCP keepalive on every connection.
//!
//! Why: a watch is a long HTTP response that may be silent for minutes, so a connection that
//! died under it is noticed only by the client's read deadline (kube's default: 295 s). Such a
//! death is ordinary on a node: when a link goes down the kernel drops every masqueraded
//! connection's NAT mapping (a pod's connection to the API server through kube-proxy's ClusterIP
//! is one), so the API server's next packet is answered with a reset the client never sees. The
//! lab saw exactly this: after a node's link was cut for a second, the Service controller on that
//! node missed a Service's deletion for minutes, and an agent's pod watch fell behind. With
//! keepalive the first probe after [`KEEPALIVE_IDLE`] of silence gets that reset (or, on a path
//! that is really gone, no answer for [`KEEPALIVE_RETRIES`] probes), the read fails, and the
//! watcher resumes on a new connection. client-go gets the same from HTTP/2 health-check pings;
//! kube's stack speaks HTTP/1.1 and sets no socket options, hence this module.
//!
//! Everything else is as kube builds it from a [`kube::Config`] (TLS, authentication, the
//! connect/read/write deadlines, the retry of 429/503/504 when `default_retry` is set), less
//! response decompression and request tracing spans, which Berth does not use.

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::retry::RetryPolicy;
use kube::client::ConfigExt;
use std::time::Duration;
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};

/// Silence on a connection after which the first keepalive probe goes out.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Time between unanswered probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes after which the kernel declares the connection dead.
pub const KEEPALIVE_RETRIES: u32 = 3;

/// A client for `config` whose connections carry TCP keepalive (see the module doc).
pub fn build(config: kube::Config) -> Result<kube::Client, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_keepalive(Some(KEEPALIVE_IDLE));
    http.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
    http.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
    let https = config.rustls_https_connector_with_connector(http)?;
    let mut timed = hyper_timeout::TimeoutConnector::new(https);
    timed.set_connect_timeout(config.connect_timeout);
    timed.set_read_timeout(config.read_timeout);
    timed.set_write_timeout(config.write_timeout);
    timed.set_reset_reader_on_write(config.reset_reader_on_write);
    let hyper: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Builder::new(TokioExecutor::new()).build(timed);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace))
}
