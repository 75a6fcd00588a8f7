//! A minimal HTTP/1.1 client for the example service's API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Status, body and round-trip time of one request.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
    pub elapsed: Duration,
}

/// Sends `POST path` with a JSON body to `address` on a new connection and reads the
/// whole response. Panics if the server does not respond within `timeout`.
pub fn post_json(address: &str, path: &str, body: &str, timeout: Duration) -> HttpResponse {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    exchange(address, path, &request, timeout)
}

/// Sends `GET path` to `address` on a new connection and reads the whole response.
pub fn get(address: &str, path: &str, timeout: Duration) -> HttpResponse {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    exchange(address, path, &request, timeout)
}

fn exchange(address: &str, path: &str, request: &str, timeout: Duration) -> HttpResponse {
    let started = Instant::now();
    let mut stream = TcpStream::connect(address)
        .unwrap_or_else(|error| panic!("failed to connect to {address}: {error}"));
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .unwrap_or_else(|error| panic!("no complete response from {address}{path}: {error}"));
    let elapsed = started.elapsed();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("malformed HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    HttpResponse {
        status,
        body,
        elapsed,
    }
}
