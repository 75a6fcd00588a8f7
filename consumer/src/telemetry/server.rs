//! The telemetry HTTP endpoint: `/metrics`, `/healthz` and `/readyz` over HTTP/1.1.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{health, metrics};

/// Failure to open the telemetry endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address is not `host:port` with an IP address.
    #[error("telemetry.listen_address {address:?} is not a valid IP:port, for example 127.0.0.1:9464 or 0.0.0.0:9464")]
    InvalidAddress {
        /// The configured value.
        address: String,
    },
    /// The port is taken or the address is not local.
    #[error(
        "failed to listen on telemetry.listen_address {address}: {source}; choose a free port"
    )]
    Bind {
        /// The configured value.
        address: String,
        /// Operating system error.
        source: std::io::Error,
    },
}

/// Parses `address` as `IP:port`.
pub fn parse_listen_address(address: &str) -> Result<SocketAddr, ServerError> {
    address.parse().map_err(|_| ServerError::InvalidAddress {
        address: address.to_owned(),
    })
}

/// Opens the listening socket at `address` (`IP:port`; port 0 picks a free port).
pub async fn bind(address: &str) -> Result<TcpListener, ServerError> {
    let socket = parse_listen_address(address)?;
    TcpListener::bind(socket)
        .await
        .map_err(|source| ServerError::Bind {
            address: address.to_owned(),
            source,
        })
}

/// Serves requests on `listener` until `shutdown` completes. Connections already open
/// finish their current request.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                tracing::warn!(error = %error, "Failed to accept a telemetry connection.");
                continue;
            }
        };
        tokio::spawn(async move {
            let connection =
                http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(handle));
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "Telemetry connection ended with an error.");
            }
        });
    }
}

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(respond(request.method(), request.uri().path()))
}

fn respond(method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are supported\n".to_owned(),
        );
    }
    match path {
        "/metrics" => {
            let mut response = text(StatusCode::OK, metrics::encode());
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "alive\n".to_owned()),
        "/readyz" => {
            let readiness = health::readiness();
            let status = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let verdict = if readiness.ready {
                "ready"
            } else {
                "not ready"
            };
            let body = format!("{verdict}\n{}\n", readiness.checks.join("\n"));
            text(status, body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; the paths are /metrics, /healthz and /readyz\n".to_owned(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_status_codes() {
        // (method, path, expected status); /readyz is not ready in a fresh process.
        let cases = [
            (Method::GET, "/metrics", StatusCode::OK),
            (Method::GET, "/healthz", StatusCode::OK),
            (Method::HEAD, "/healthz", StatusCode::OK),
            (Method::GET, "/readyz", StatusCode::SERVICE_UNAVAILABLE),
            (Method::GET, "/", StatusCode::NOT_FOUND),
            (Method::POST, "/metrics", StatusCode::METHOD_NOT_ALLOWED),
        ];
        for (method, path, expected) in cases {
            let response = respond(&method, path);
            assert_eq!(response.status(), expected, "{method} {path}");
        }
    }

    #[test]
    fn invalid_listen_addresses_are_named() {
        for address in ["", "localhost:9464", "127.0.0.1", "127.0.0.1:99999"] {
            let error = parse_listen_address(address).unwrap_err().to_string();
            assert!(error.contains(&format!("{address:?}")), "{error}");
        }
        assert!(parse_listen_address("[::1]:9464").is_ok());
    }
}
