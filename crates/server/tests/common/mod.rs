//! A server on 127.0.0.1:0 over the runtime's tiny Llama fixture (CPU), and a small blocking
//! HTTP/1.1 client that can read a streamed body piece by piece.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hoist_server::{KeepAlive, Models, RegistryOptions, ServerConfig, StaticModels};
use serde_json::Value;

/// The runtime's test fixtures.
pub fn fixtures() -> PathBuf {
    hoist_testkit::models::runtime_fixtures()
}

/// The Llama fixture with the fixture tokenizer and its chat template beside it.
pub fn model_dir() -> tempfile::TempDir {
    hoist_testkit::models::chat_model_dir()
}

/// Settings for CPU tests: model `tiny`, the given queue.
pub fn config(queue_depth: usize) -> ServerConfig {
    ServerConfig {
        registry: RegistryOptions {
            device: hoist_engine::Device::Cpu,
            queue_depth,
            parallel: 1,
            pool_size: 2,
            context: None,
            keep_alive: KeepAlive::For(Duration::from_secs(300)),
            placement: Default::default(),
            cache: Default::default(),
        },
        api_key: None,
        body_limit_bytes: hoist_server::DEFAULT_BODY_LIMIT_BYTES,
    }
}

/// A running server; dropping it stops it.
pub struct Server {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves the fixture as `tiny` with `config`.
    pub fn start(config: ServerConfig) -> Server {
        let dir = model_dir();
        let models: Arc<dyn Models> = Arc::new(StaticModels::new([(
            "tiny".to_string(),
            dir.path().to_path_buf(),
        )]));
        Server::start_with(models, dir, config)
    }

    /// Serves `models` with `config`; `dir` lives as long as the server.
    pub fn start_with(
        models: Arc<dyn Models>,
        dir: tempfile::TempDir,
        config: ServerConfig,
    ) -> Server {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let shutdown = async move {
                    let _ = stopped.await;
                };
                hoist_server::serve(listener, models, config, shutdown)
                    .await
                    .unwrap();
            });
            rt.shutdown_timeout(Duration::from_secs(5));
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Server {
            addr,
            dir,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, None, &[])
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        request(self.addr, "POST", path, Some(body), &[])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A response whose body is read as it comes.
pub struct Streaming {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: BufReader<Box<dyn Read + Send>>,
}

impl Streaming {
    /// The next line of the body (without its newline); `None` at the end.
    pub fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.body.read_line(&mut line).unwrap() {
            0 => None,
            _ => Some(line.trim_end_matches('\n').to_string()),
        }
    }

    pub fn rest(mut self) -> String {
        let mut s = String::new();
        self.body.read_to_string(&mut s).unwrap();
        s
    }
}

/// Sends a request and returns once the headers are in.
pub fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Streaming {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':').unwrap();
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let chunked = header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let inner: Box<dyn Read + Send> = if chunked {
        Box::new(Chunked {
            inner: reader,
            left: 0,
            done: false,
        })
    } else {
        let len: u64 = header(&headers, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        Box::new(reader.take(len))
    };
    Streaming {
        status,
        headers,
        body: BufReader::new(inner),
    }
}

/// Sends a request and reads the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Response {
    let s = open(addr, method, path, body, headers);
    let (status, headers) = (s.status, s.headers.clone());
    Response {
        status,
        headers,
        body: s.rest(),
    }
}

/// A chunked transfer-encoded body, decoded.
struct Chunked {
    inner: BufReader<TcpStream>,
    left: usize,
    done: bool,
}

impl Read for Chunked {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut size = String::new();
            self.inner.read_line(&mut size)?;
            return self.read_size(size.trim(), buf);
        }
        self.read_data(buf)
    }
}

impl Chunked {
    fn read_size(&mut self, size: &str, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("0"), 16)
            .map_err(|e| std::io::Error::other(format!("bad chunk size {size:?}: {e}")))?;
        if n == 0 {
            self.done = true;
            return Ok(0);
        }
        self.left = n;
        self.read_data(buf)
    }

    fn read_data(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min(self.left);
        let got = self.inner.read(&mut buf[..want])?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= got;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
        }
        Ok(got)
    }
}

/// The JSON of each `data:` frame of an SSE body, which `data: [DONE]` must end.
pub fn sse(body: &str) -> Vec<Value> {
    let frames: Vec<&str> = body.split_terminator("\n\n").collect();
    assert_eq!(frames.last(), Some(&"data: [DONE]"), "{body:?}");
    frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f.strip_prefix("data: ").unwrap()).unwrap())
        .collect()
}
