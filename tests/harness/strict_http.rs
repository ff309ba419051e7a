//! A strict HTTP/1.1 server that refuses chunked request bodies, as Python's `http.server`,
//! several WSGI setups and some API gateways do in effect: a request with
//! `Transfer-Encoding` gets `411 Length Required` and the connection is closed; a request
//! framed by `Content-Length` gets `200 {}`. It reads the bytes off the socket itself (no HTTP
//! library in between that could normalise the framing) and keeps every request head as it
//! arrived, so a test can show what was on the wire.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Captured {
    /// `POST /path HTTP/1.1`.
    pub request_line: String,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body read by its `Content-Length` (empty for a refused request).
    pub body: Vec<u8>,
    /// The status answered: 200, or 411 for a chunked body.
    pub answered: u16,
}

impl Captured {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The request's path.
    pub fn path(&self) -> &str {
        self.request_line.split(' ').nth(1).unwrap_or("")
    }
}

/// A running strict server on a free loopback port.
#[derive(Clone)]
pub struct StrictServer {
    /// Its port.
    pub port: u16,
    captured: Arc<Mutex<Vec<Captured>>>,
}

impl StrictServer {
    /// Starts the server for the rest of the test.
    pub async fn start() -> StrictServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("bound").port();
        let captured = Arc::new(Mutex::new(Vec::new()));
        let log = captured.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, log.clone()));
            }
        });
        StrictServer { port, captured }
    }

    /// Every request so far.
    pub fn captured(&self) -> Vec<Captured> {
        self.captured.lock().unwrap().clone()
    }
}

/// Serves one kept-alive connection until the peer closes it or a request is refused.
async fn serve(socket: TcpStream, log: Arc<Mutex<Vec<Captured>>>) {
    let mut reader = BufReader::new(socket);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let mut captured = Captured {
            request_line: request_line.trim_end().to_string(),
            headers,
            body: Vec::new(),
            answered: 200,
        };
        let chunked = captured.header("transfer-encoding").is_some();
        let length = captured
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        let answer: &[u8] = if chunked {
            captured.answered = 411;
            b"HTTP/1.1 411 Length Required\r\ncontent-type: text/plain\r\ncontent-length: 34\r\n\
              connection: close\r\n\r\nchunked request bodies are refused"
        } else {
            let mut body = vec![0; length.unwrap_or(0)];
            if reader.read_exact(&mut body).await.is_err() {
                return;
            }
            captured.body = body;
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        };
        log.lock().unwrap().push(captured);
        if reader.get_mut().write_all(answer).await.is_err() || chunked {
            return;
        }
    }
}
