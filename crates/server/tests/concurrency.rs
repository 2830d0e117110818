//! Queueing, 503 beyond the bound, cancellation when a client disconnects, and a bounded load
//! test: many concurrent streams against a small queue all end (done or 503), none hangs.

mod common;

use std::time::{Duration, Instant};

use common::{config, open, Server};
use serde_json::{json, Value};

/// A sampled request that runs long on the fixture: the first seed whose reply reaches 200
/// tokens before an end token (found by asking), with its full duration in nanoseconds.
fn long_request(server: &Server) -> (Value, u64) {
    for seed in 0..64 {
        let body = json!({"model": "tiny", "prompt": "go", "stream": false,
            "options": {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "seed": seed, "num_predict": 1500}});
        let v = server.post("/api/generate", &body).json();
        if v["eval_count"].as_u64().unwrap_or(0) >= 200 {
            return (body, v["total_duration"].as_u64().unwrap());
        }
    }
    panic!("no seed made a long reply");
}

#[test]
fn full_queue_refuses_and_a_disconnect_cancels() {
    let mut c = config(0);
    c.registry.context = Some(2048);
    let server = Server::start(c);
    let (mut body, full_ns) = long_request(&server);
    body["stream"] = json!(true);
    let mut held = open(server.addr, "POST", "/api/generate", Some(&body), &[]);
    assert_eq!(held.status, 200);
    let first: Value = serde_json::from_str(&held.line().unwrap()).unwrap();
    assert_eq!(first["done"], false, "the held request is running");

    // Queue 0: the running request is all the model takes.
    let r = server.post(
        "/api/generate",
        &json!({"model": "tiny", "prompt": "x", "options": {"num_predict": 2}}),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("busy"));
    let r = server.post(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "x", "max_tokens": 2}),
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "server_busy");

    // The client goes away: its generation stops, and the model takes the next request well
    // before the held one would have ended.
    let t0 = Instant::now();
    drop(held);
    loop {
        let r = server.post("/api/generate", &json!({"model": "tiny", "prompt": "x", "stream": false, "options": {"num_predict": 2}}));
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503);
        assert!(
            t0.elapsed() < Duration::from_nanos(full_ns / 2),
            "not cancelled"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn many_streams_against_a_small_queue_all_end() {
    let server = Server::start(config(8));
    let addr = server.addr;
    let t0 = Instant::now();
    let clients: Vec<_> = (0..32)
        .map(|i| {
            std::thread::spawn(move || {
                let body = json!({"model": "tiny", "stream": true,
                    "messages": [{"role": "user", "content": format!("hello {i}")}],
                    "options": {"num_predict": 16, "seed": i}});
                let s = open(addr, "POST", "/api/chat", Some(&body), &[]);
                let status = s.status;
                let rest = s.rest();
                if status == 200 {
                    let last: Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
                    assert_eq!(last["done"], true, "{rest}");
                }
                status
            })
        })
        .collect();
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 503),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().filter(|&&s| s == 200).count() >= 9,
        "{statuses:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(120));
    // Still answering.
    assert_eq!(server.get("/api/tags").status, 200);
    let r = server.post(
        "/api/chat",
        &json!({"model": "tiny", "stream": false,
        "messages": [{"role": "user", "content": "again"}], "options": {"num_predict": 4}}),
    );
    assert_eq!(r.status, 200);
}

/// The process's resident memory in KiB (the server runs in this process).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One client of the load test: a chat stream on Ollama's or OpenAI's API, read to its end or
/// (every fifth) dropped after its first line. Returns the status.
fn load_client(addr: std::net::SocketAddr, i: u64) -> u16 {
    let content = format!("client {i} says hello");
    let (path, body) = match i % 2 {
        0 => (
            "/api/chat",
            json!({"model": "tiny", "stream": true,
                "messages": [{"role": "user", "content": content}],
                "options": {"num_predict": 24, "seed": i, "temperature": 0.8}}),
        ),
        _ => (
            "/v1/chat/completions",
            json!({"model": "tiny", "stream": true, "max_tokens": 24, "seed": i,
                "messages": [{"role": "user", "content": content}]}),
        ),
    };
    let mut s = open(addr, "POST", path, Some(&body), &[]);
    let status = s.status;
    if status != 200 {
        return status;
    }
    if i % 5 == 4 {
        // Gone after the first piece: its generation is cancelled, its place freed.
        assert!(s.line().is_some());
        return status;
    }
    let rest = s.rest();
    let last = rest.lines().rfind(|l| !l.trim().is_empty()).unwrap();
    match i % 2 {
        0 => {
            let v: Value = serde_json::from_str(last).unwrap();
            assert_eq!(v["done"], true, "{rest}");
        }
        _ => assert_eq!(last, "data: [DONE]", "{rest}"),
    }
    status
}

#[test]
fn sixty_four_streams_against_four_parallel_slots() {
    let mut c = config(8);
    c.registry.parallel = 4;
    c.registry.pool_size = 4;
    let server = Server::start(c);
    let addr = server.addr;
    // Loaded, and the allocator warmed, before the baseline.
    assert_eq!(
        server
            .post(
                "/api/generate",
                &json!({"model": "tiny", "prompt": "x", "stream": false,
                "options": {"num_predict": 2}})
            )
            .status,
        200
    );
    let rss_before = rss_kib();
    let t0 = Instant::now();
    let clients: Vec<_> = (0..64)
        .map(|i| std::thread::spawn(move || load_client(addr, i)))
        .collect();
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let elapsed = t0.elapsed();
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 503),
        "{statuses:?}"
    );
    // Four running and eight queued are always admitted.
    let served = statuses.iter().filter(|&&s| s == 200).count();
    assert!(served >= 12, "{served} served: {statuses:?}");
    assert!(elapsed < Duration::from_secs(120), "took {elapsed:?}");
    let grown_kib = rss_kib().saturating_sub(rss_before);
    assert!(grown_kib < 256 << 10, "RSS grew by {grown_kib} KiB");
    // Still serving, every slot free again.
    for _ in 0..4 {
        let r = server.post(
            "/api/chat",
            &json!({"model": "tiny", "stream": false,
            "messages": [{"role": "user", "content": "again"}], "options": {"num_predict": 4}}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let ps = server.get("/api/ps").json();
    assert_eq!(ps["models"].as_array().unwrap().len(), 1);
}
