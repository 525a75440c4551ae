//! The API client's connections carry TCP keepalive (berth_k8s::client): a request to a small
//! HTTP server on loopback, then the kernel's view of the client's socket (`ss`) shows the
//! keepalive timer, counting down from at most `KEEPALIVE_IDLE`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;

/// Answers one `GET /version` on one connection, then keeps the connection open until the client
/// closes it (as the API server keeps an idle HTTP/1.1 connection).
fn version_server() -> (u16, std::thread::JoinHandle<()>) {
    // The thread is left to the process's end: the client's pool keeps the connection open.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
        }
        let body = r#"{"major":"1","minor":"20","gitVersion":"v1.20.2","gitCommit":"","gitTreeState":"","buildDate":"","goVersion":"","compiler":"","platform":"linux/amd64"}"#;
        let mut w = s;
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // Until the client goes.
        let _ = r.read_line(&mut line);
    });
    (port, h)
}

#[tokio::test]
async fn the_clients_connections_carry_tcp_keepalive() {
    let (port, server) = version_server();
    let mut config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    config.default_retry = false;
    let (client, _) = berth_k8s::client_from(config).unwrap();
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.git_version, "v1.20.2");
    // The client's end of the (pooled, idle) connection.
    let out = Command::new("ss")
        .args([
            "-tno",
            "state",
            "established",
            "dst",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let timer = text
        .split("timer:(")
        .nth(1)
        .unwrap_or_else(|| panic!("no timer on the client's socket: {text}"));
    assert!(timer.starts_with("keepalive,"), "{text}");
    // "keepalive,9.996ms,0)": the first probe within KEEPALIVE_IDLE. Debian 12's ss prints
    // this timer's seconds with an "ms" suffix, so only the number and the unit's absence of
    // "min" (the kernel's default idle time is two hours: "120min") are read.
    let when = &timer["keepalive,".len()..];
    let number: String = when
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let n: f64 = number.parse().unwrap_or_else(|_| panic!("{text}"));
    assert!(!when[number.len()..].starts_with("min"), "{text}");
    assert!(
        n > 0.0 && n <= berth_k8s::client::KEEPALIVE_IDLE.as_secs_f64(),
        "{text}"
    );
    // The server thread ends when the process does (the pool keeps the connection).
    drop(server);
}
