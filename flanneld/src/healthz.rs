//! The health server on `--healthz-ip:--healthz-port`: `GET /healthz` answers 200 while the process
//! is alive; `GET /readyz` answers 200 only while the lease is valid and the data plane has
//! converged, and 503 with the reason otherwise (including later, when it stops being true);
//! `GET /metrics` answers the Prometheus metrics ([`crate::metrics`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Whether the agent is ready, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Lease valid and data plane converged.
    Ready,
    /// Ready, with something the operator should know shown in the `/readyz` body (e.g. the
    /// network config in etcd changed and needs a restart to apply).
    ReadyNote(String),
    /// Not ready, with the reason shown in the `/readyz` body.
    NotReady(String),
}

/// The content type of `/metrics` (prometheus-client writes the OpenMetrics text format).
const METRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn respond(path: &str, ready: &Readiness) -> (StatusCode, String) {
    match path {
        "/healthz" => (StatusCode::OK, "flanneld is running\n".into()),
        "/readyz" => match ready {
            Readiness::Ready => (StatusCode::OK, "flanneld is ready\n".into()),
            Readiness::ReadyNote(note) => {
                (StatusCode::OK, format!("flanneld is ready; note: {note}\n"))
            }
            Readiness::NotReady(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("flanneld is not ready yet: {why}\n"),
            ),
        },
        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Binds the listener (so a port conflict is reported at startup, before anything else runs).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves health requests forever on `listener`, reading readiness from `ready`; `/metrics`
/// renders `metrics`.
pub async fn serve(
    listener: TcpListener,
    ready: watch::Receiver<Readiness>,
    metrics: Arc<Metrics>,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("healthz: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let ready = ready.clone();
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let path = req.uri().path();
                let (status, body, content_type) = match path {
                    "/metrics" => (StatusCode::OK, metrics.render(), METRICS_TYPE),
                    _ => {
                        let (status, body) = respond(path, &ready.borrow());
                        (status, body, "text/plain; charset=utf-8")
                    }
                };
                async move {
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = status;
                    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
                        resp.headers_mut()
                            .insert(hyper::header::CONTENT_TYPE, value);
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("healthz: connection error: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn routes_and_statuses() {
        assert_eq!(
            respond("/healthz", &Readiness::NotReady("x".into())).0,
            StatusCode::OK
        );
        assert_eq!(respond("/readyz", &Readiness::Ready).0, StatusCode::OK);
        let (status, body) = respond("/readyz", &Readiness::NotReady("no lease".into()));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("no lease"));
        assert_eq!(
            respond("/other", &Readiness::Ready).0,
            StatusCode::NOT_FOUND
        );
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn readiness_follows_the_channel_both_ways() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(Readiness::NotReady("starting".into()));
        tokio::spawn(serve(listener, rx, Metrics::new()));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(addr, "/metrics").await;
        let build = format!(
            "flannel_build_info{{version=\"{}\",commit=\"{}\",target=\"{}\"}} 1",
            crate::build_info::VERSION,
            crate::build_info::COMMIT,
            crate::build_info::TARGET
        );
        assert!(metrics.contains(&build), "{metrics}");
        assert!(
            metrics.contains("application/openmetrics-text"),
            "{metrics}"
        );
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        tx.send(Readiness::Ready).unwrap();
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        tx.send(Readiness::NotReady("lease lost".into())).unwrap();
        let resp = get(addr, "/readyz").await;
        assert!(
            resp.starts_with("HTTP/1.1 503") && resp.contains("lease lost"),
            "{resp}"
        );
    }
}
