//! `hoist serve` as a process: it binds a free port, answers over HTTP, and refuses bad flags
//! before binding.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

/// Kills the server when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serves_a_model_on_a_free_port() {
    let dir = common::model_dir(true);
    let model = format!("tiny={}", dir.path().display());
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_hoist"))
            .args([
                "serve",
                "--device",
                "cpu",
                "--port",
                "0",
                "--parallel",
                "2",
                "--model",
                &model,
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("hoist serve: listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    assert!(
        addr.starts_with("127.0.0.1:"),
        "loopback by default: {addr}"
    );
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"tiny:latest\""), "{response}");
}

#[test]
fn bad_flags_fail_before_binding() {
    let out = common::hoist_with_stdin(&["serve", "--model", "no-equals-sign"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=PATH"));
    let out = common::hoist_with_stdin(&["serve", "--model", "m=/no/such/file.gguf"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file"));
    for n in ["0", "65", "many"] {
        let out = common::hoist_with_stdin(&["serve", "--parallel", n], "");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("from 1 to 64"), "{err}");
    }
}
