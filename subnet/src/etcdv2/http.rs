//! A small HTTP/1.1 client for the etcd v2 keys API: one connection per request (the agent makes
//! a handful of requests a day plus its long polls), plain or mutual TLS with the `--etcd-*`
//! files, basic auth, endpoints tried in order until one accepts the connection, and every
//! request bounded by a timeout (a long poll only until its response headers arrive).

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::etcd::{self, check_endpoints, error_chain, tls_material, EtcdOptions, TlsMaterial};
use crate::registry::RegistryError;

/// How long connecting (TCP and TLS) to one endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One `--etcd-endpoints` URL.
#[derive(Clone, Debug)]
struct Endpoint {
    https: bool,
    host: String,
    port: u16,
}

impl Endpoint {
    /// Parses `http://host:port` or `https://host:port` (a path is ignored; the port defaults
    /// to 80 or 443 as in Go's HTTP client).
    fn parse(url: &str) -> Result<Endpoint, RegistryError> {
        let bad = |why: &str| RegistryError::BadOptions(format!("--etcd-endpoints {url}: {why}"));
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad("expected http:// or https://"));
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
            None if https => 443,
            None => 80,
        };
        Ok(Endpoint {
            https,
            host: host.to_string(),
            port,
        })
    }

    /// The `Host` header value.
    fn authority(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// An answer: status, the `X-Etcd-Index` header, and the body.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The HTTP status.
    pub(crate) status: StatusCode,
    /// The store index when the request was served (`X-Etcd-Index`).
    pub(crate) index: Option<u64>,
    /// The server's clock when it answered (the `Date` header).
    pub(crate) date: Option<SystemTime>,
    /// The body.
    pub(crate) body: Bytes,
}

/// A response whose body is still to come (a long poll); the connection lives as long as it.
pub(crate) struct Pending {
    /// The HTTP status.
    pub(crate) status: StatusCode,
    /// `X-Etcd-Index`: for a watch, the store index when the watch started.
    pub(crate) index: Option<u64>,
    /// The `Date` header.
    pub(crate) date: Option<SystemTime>,
    body: Incoming,
    connection: Connection,
}

impl Pending {
    /// Reads the whole body.
    pub(crate) async fn body(self) -> Result<Bytes, String> {
        let bytes = self
            .body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| error_chain(&e));
        drop(self.connection);
        bytes
    }
}

/// The task driving one connection; aborted when the response is dropped.
struct Connection(JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A byte stream to etcd, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The etcd v2 HTTP client.
#[derive(Clone)]
pub(crate) struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<Endpoint>,
    /// The endpoints, comma separated, for error messages.
    described: String,
    tls: Option<TlsConnector>,
    authorization: Option<HeaderValue>,
    timeout: Duration,
    /// The endpoint that answered last; tried first.
    preferred: AtomicUsize,
}

impl Client {
    /// A client for `options` (no connection is made yet).
    pub(crate) fn new(options: &EtcdOptions) -> Result<Client, RegistryError> {
        let material = tls_material(options)?;
        let described = check_endpoints(options, material.is_some())?;
        let endpoints = options
            .endpoints
            .iter()
            .map(|e| Endpoint::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = match material {
            Some(material) => Some(TlsConnector::from(Arc::new(tls_config(material, options)?))),
            None if endpoints.iter().any(|e| e.https) => {
                return Err(RegistryError::BadOptions(
                    "https endpoints need --etcd-cafile (the CA that signed the etcd server \
                     certificate)"
                        .into(),
                ))
            }
            None => None,
        };
        let authorization = match (&options.username, &options.password) {
            (Some(user), password) if !user.is_empty() => {
                let credentials = format!("{user}:{}", password.as_deref().unwrap_or_default());
                let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
                HeaderValue::from_str(&format!("Basic {encoded}")).ok()
            }
            _ => None,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints,
                described,
                tls,
                authorization,
                timeout: options.request_timeout,
                preferred: AtomicUsize::new(0),
            }),
        })
    }

    /// The endpoints, comma separated.
    pub(crate) fn endpoints(&self) -> &str {
        &self.inner.described
    }

    /// Sends a request and reads the whole answer, within the request timeout.
    pub(crate) async fn call(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        form: Option<String>,
    ) -> Result<Reply, RegistryError> {
        let exchange = async {
            let pending = self.open(operation, method, path, form).await?;
            let (status, index, date) = (pending.status, pending.index, pending.date);
            let body = pending
                .body()
                .await
                .map_err(|e| etcd::unavailable(self.endpoints(), self.inner.tls.is_some(), e))?;
            Ok(Reply {
                status,
                index,
                date,
                body,
            })
        };
        match tokio::time::timeout(self.inner.timeout, exchange).await {
            Ok(reply) => reply,
            Err(_) => Err(self.timed_out(operation)),
        }
    }

    /// Sends a request and returns once the response headers arrived (within the request
    /// timeout); the body is read by the caller, as slowly as it likes.
    pub(crate) async fn open(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        form: Option<String>,
    ) -> Result<Pending, RegistryError> {
        let sending = async {
            let (endpoint, connection, mut sender) = self.connect().await?;
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, endpoint.authority());
            if let Some(auth) = &self.inner.authorization {
                request = request.header(AUTHORIZATION, auth.clone());
            }
            if form.is_some() {
                request = request.header(CONTENT_TYPE, "application/x-www-form-urlencoded");
            }
            let request = request
                .body(Full::new(Bytes::from(form.unwrap_or_default())))
                .map_err(|e| RegistryError::BadOptions(format!("invalid etcd request: {e}")))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| self.unavailable(&e))?;
            let index = response
                .headers()
                .get("X-Etcd-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let date = response
                .headers()
                .get(hyper::header::DATE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok());
            Ok(Pending {
                status: response.status(),
                index,
                date,
                body: response.into_body(),
                connection,
            })
        };
        match tokio::time::timeout(self.inner.timeout, sending).await {
            Ok(pending) => pending,
            Err(_) => Err(self.timed_out(operation)),
        }
    }

    /// Connects to the first endpoint that accepts, starting with the one that answered last.
    async fn connect(
        &self,
    ) -> Result<
        (
            &Endpoint,
            Connection,
            hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        ),
        RegistryError,
    > {
        let n = self.inner.endpoints.len();
        let first = self.inner.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for i in (0..n).map(|k| (first + k) % n) {
            let endpoint = &self.inner.endpoints[i];
            match self.handshake(endpoint).await {
                Ok((connection, sender)) => {
                    self.inner.preferred.store(i, Ordering::Relaxed);
                    return Ok((endpoint, connection, sender));
                }
                Err(e) => failures.push(e),
            }
        }
        Err(etcd::unavailable(
            self.endpoints(),
            self.inner.tls.is_some(),
            failures.join("; "),
        ))
    }

    /// Opens a connection to `endpoint` (TCP, TLS, HTTP/1.1).
    async fn handshake(
        &self,
        endpoint: &Endpoint,
    ) -> Result<
        (
            Connection,
            hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        ),
        String,
    > {
        let name = endpoint.authority();
        let connecting = async {
            let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
                .await
                .map_err(|e| format!("{name}: {}", error_chain(&e)))?;
            let stream: Pin<Box<dyn Stream>> = match (&self.inner.tls, endpoint.https) {
                (Some(tls), true) => {
                    let server = ServerName::try_from(endpoint.host.clone())
                        .map_err(|e| format!("{name}: invalid TLS server name: {e}"))?;
                    let stream = tls
                        .connect(server, tcp)
                        .await
                        .map_err(|e| format!("{name}: TLS handshake: {}", error_chain(&e)))?;
                    Box::pin(stream)
                }
                _ => Box::pin(tcp),
            };
            hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("{name}: {}", error_chain(&e)))
        };
        let (sender, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("{name}: no connection within {CONNECT_TIMEOUT:?}"))??;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("etcd v2 connection ended: {e}");
            }
        });
        Ok((Connection(task), sender))
    }

    fn unavailable(&self, error: &hyper::Error) -> RegistryError {
        etcd::unavailable(
            self.endpoints(),
            self.inner.tls.is_some(),
            error_chain(error),
        )
    }

    fn timed_out(&self, operation: &'static str) -> RegistryError {
        RegistryError::Timeout {
            endpoints: self.endpoints().to_string(),
            operation,
            timeout: self.inner.timeout,
        }
    }
}

/// The rustls client configuration: the CA to verify the server, the client certificate if
/// given (`options` names the files in errors).
fn tls_config(material: TlsMaterial, options: &EtcdOptions) -> Result<ClientConfig, RegistryError> {
    let bad = |flag: &'static str, problem: String| {
        let path = match flag {
            "--etcd-cafile" => &options.cafile,
            "--etcd-certfile" => &options.certfile,
            _ => &options.keyfile,
        };
        RegistryError::TlsFile {
            flag,
            path: path.clone().unwrap_or_default(),
            problem,
        }
    };
    let Some(ca) = material.ca else {
        return Err(RegistryError::BadOptions(
            "--etcd-certfile/--etcd-keyfile need --etcd-cafile with the etcd v2 API (the CA that \
             signed the etcd server certificate)"
                .into(),
        ));
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        let cert = cert.map_err(|e| bad("--etcd-cafile", e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| bad("--etcd-cafile", e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::BadOptions(format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    match material.identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("--etcd-certfile", e.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|e| bad("--etcd-keyfile", e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("--etcd-keyfile", e.to_string()))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_like_urls() {
        let e = Endpoint::parse("https://10.0.0.1:2379").unwrap();
        assert!(e.https);
        assert_eq!((e.host.as_str(), e.port), ("10.0.0.1", 2379));
        let e = Endpoint::parse("http://etcd.local/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.https),
            ("etcd.local", 80, false)
        );
        let e = Endpoint::parse("https://[fd00::1]:4001").unwrap();
        assert_eq!(e.authority(), "[fd00::1]:4001");
        for bad in [
            "10.0.0.1:2379",
            "http://:2379",
            "http://h:x",
            "https://[::1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn https_without_a_ca_is_refused() {
        let options = EtcdOptions {
            endpoints: vec!["https://127.0.0.1:2379".into()],
            ..EtcdOptions::default()
        };
        let err = Client::new(&options).err().unwrap().to_string();
        assert!(err.contains("--etcd-cafile"), "{err}");
    }
}
