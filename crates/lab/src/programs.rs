//! The programs the lab's images run: the pod sandbox's `pause`, and a test server (`echo`)
//! with its client (`probe`).
//!
//! Why: the images hold only Berth's static binaries, so these are subcommands of `berth`
//! (`berth lab pause|echo|probe`). The echo server reports the peer address it saw and its pod's
//! name: Service, announcement and attachment tests check source addresses with it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;

use crate::util::is_test_addr;

/// Runs as a pod sandbox's process: waits for SIGTERM or SIGINT (then exits 0) and reaps every
/// child it inherits (SIGCHLD).
///
/// Why: the pause container holds the pod's namespaces; as PID 1 of a shared PID namespace it
/// must reap orphans, and it must stop promptly when the runtime asks.
pub fn pause() -> ! {
    // SAFETY: signal-mask and wait calls on our own process; the set is plain data.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            let mut sig: libc::c_int = 0;
            if libc::sigwait(&set, &mut sig) != 0 {
                continue;
            }
            if sig == libc::SIGCHLD {
                while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            } else {
                libc::_exit(0);
            }
        }
    }
}

/// Ports of the echo server. Why: one value shared by the CLI and the lab's manifests.
#[derive(Debug, Clone, Copy)]
pub struct EchoPorts {
    /// HTTP: any request gets the JSON report as its body.
    pub http: u16,
    /// TCP: the report as the first line, then every line echoed back.
    pub tcp: u16,
    /// UDP: every datagram is answered with the report.
    pub udp: u16,
    /// How long to go on serving after SIGTERM (a pod that drains slowly); zero exits at once.
    pub drain: std::time::Duration,
}

impl Default for EchoPorts {
    fn default() -> Self {
        EchoPorts {
            http: 8080,
            tcp: 9000,
            udp: 9000,
            drain: std::time::Duration::ZERO,
        }
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// An address with IPv4-mapped IPv6 shown as IPv4. Why: a dual-stack socket sees v4 peers so.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The JSON line the echo server answers with.
fn report(proto: &str, peer: SocketAddr, local: Option<SocketAddr>) -> String {
    let peer = canonical(peer);
    json!({
        "pod": std::env::var("POD_NAME").unwrap_or_else(|_| hostname()),
        "proto": proto,
        "peer": peer.to_string(),
        "peerIP": peer.ip().to_string(),
        "local": local.map(|l| canonical(l).to_string()),
    })
    .to_string()
}

fn bind_tcp(port: u16) -> Result<TcpListener> {
    TcpListener::bind(("::", port))
        .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
        .with_context(|| format!("binding TCP port {port}"))
}

fn serve_http(mut s: TcpStream) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let peer = s.peer_addr()?;
    let local = s.local_addr().ok();
    let mut r = BufReader::new(s.try_clone()?);
    // Read the request head (the body, if any, is ignored).
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let body = report("http", peer, local) + "\n";
    write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

fn serve_tcp(mut s: TcpStream) -> Result<()> {
    let peer = s.peer_addr()?;
    let local = s.local_addr().ok();
    writeln!(s, "{}", report("tcp", peer, local))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    while r.read_line(&mut line)? > 0 {
        s.write_all(line.as_bytes())?;
        line.clear();
    }
    Ok(())
}

/// Serves HTTP, TCP and UDP on `ports` (all addresses, both families) until killed.
///
/// Why: the test server of the lab's echo image.
pub fn echo(ports: EchoPorts) -> Result<()> {
    let drain = ports.drain;
    // As a container's PID 1 no signal has a default action: stop on SIGTERM/SIGINT ourselves.
    // SAFETY: signal-mask calls on this process; the set is plain data.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let set = set;
        std::thread::spawn(move || {
            let mut sig: libc::c_int = 0;
            libc::sigwait(&set, &mut sig);
            if !drain.is_zero() {
                eprintln!("berth lab echo: signal {sig}: serving {drain:?} more (draining)");
                std::thread::sleep(drain);
            }
            libc::_exit(0);
        });
    }
    let http = bind_tcp(ports.http)?;
    let tcp = bind_tcp(ports.tcp)?;
    let udp = UdpSocket::bind(("::", ports.udp))
        .or_else(|_| UdpSocket::bind(("0.0.0.0", ports.udp)))
        .with_context(|| format!("binding UDP port {}", ports.udp))?;
    eprintln!(
        "berth lab echo: http {} tcp {} udp {} as {}",
        ports.http,
        ports.tcp,
        ports.udp,
        hostname()
    );
    std::thread::spawn(move || {
        for s in http.incoming().flatten() {
            std::thread::spawn(move || serve_http(s));
        }
    });
    std::thread::spawn(move || {
        for s in tcp.incoming().flatten() {
            std::thread::spawn(move || serve_tcp(s));
        }
    });
    let local = udp.local_addr().ok();
    let mut buf = [0u8; 2048];
    loop {
        let (_, peer) = udp.recv_from(&mut buf)?;
        let answer = report(
            "udp",
            peer,
            local.map(|l| SocketAddr::new(l.ip(), ports.udp)),
        );
        let _ = udp.send_to(answer.as_bytes(), peer);
    }
}

/// Parses `http://ADDR:PORT[/path]`, `tcp://ADDR:PORT` or `udp://ADDR:PORT` (IPv6 in
/// brackets) into scheme, address and path, refusing addresses outside the lab's ranges.
pub fn parse_probe_url(url: &str) -> Result<(String, SocketAddr, String)> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow!("`{url}`: expected http://, tcp:// or udp:// ADDR:PORT"))?;
    if !matches!(scheme, "http" | "tcp" | "udp") {
        bail!("`{url}`: scheme `{scheme}` is not http, tcp or udp");
    }
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let addr: SocketAddr = hostport.parse().with_context(|| {
        format!("`{url}`: `{hostport}` is not ADDR:PORT ([ADDR]:PORT for IPv6)")
    })?;
    if !is_test_addr(addr.ip()) {
        bail!(
            "`{url}`: {} is outside the lab's ranges 198.18.0.0/15 and 2001:db8::/32: refused",
            addr.ip()
        );
    }
    Ok((scheme.to_string(), addr, path))
}

/// Sends one probe to the echo server at `url` and returns its answer (the JSON report).
///
/// Why: the client side of the echo server, runnable inside a pod (`kubectl exec`) where no
/// curl exists. Only the lab's address ranges are accepted.
pub fn probe(url: &str, timeout: Duration, source: Option<IpAddr>) -> Result<String> {
    let (scheme, addr, path) = parse_probe_url(url)?;
    match scheme.as_str() {
        "udp" => {
            let local = source.unwrap_or(if addr.is_ipv4() {
                IpAddr::from([0, 0, 0, 0])
            } else {
                IpAddr::from([0u16; 8])
            });
            let s = UdpSocket::bind((local, 0))?;
            s.set_read_timeout(Some(timeout))?;
            s.send_to(b"probe\n", addr)?;
            let mut buf = [0u8; 2048];
            let (n, _) = s
                .recv_from(&mut buf)
                .with_context(|| format!("no UDP answer from {addr} within {timeout:?}"))?;
            Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
        }
        _ => {
            let s = match source {
                None => TcpStream::connect_timeout(&addr, timeout)
                    .with_context(|| format!("connecting to {addr}"))?,
                Some(src) => connect_from(src, addr, timeout)?,
            };
            s.set_read_timeout(Some(timeout))?;
            let mut s = s;
            if scheme == "http" {
                write!(
                    s,
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
                )?;
                let mut resp = String::new();
                s.read_to_string(&mut resp)
                    .with_context(|| format!("reading the answer of {addr}"))?;
                let (head, body) = resp
                    .split_once("\r\n\r\n")
                    .ok_or_else(|| anyhow!("{addr} answered no HTTP response: {resp:?}"))?;
                if !head.starts_with("HTTP/1.1 200") {
                    bail!("{addr} answered {}", head.lines().next().unwrap_or(""));
                }
                Ok(body.trim().to_string())
            } else {
                let mut line = String::new();
                BufReader::new(s)
                    .read_line(&mut line)
                    .with_context(|| format!("reading the answer of {addr}"))?;
                Ok(line.trim().to_string())
            }
        }
    }
}

fn connect_from(src: IpAddr, dst: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    // std has no bind-before-connect: use a socket of our own through libc.
    use std::os::fd::FromRawFd;
    let domain = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket syscalls on an fd we own; addresses are built from std types.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let s = TcpStream::from_raw_fd(fd);
        let (sa, len) = sockaddr(SocketAddr::new(src, 0));
        if libc::bind(fd, (&sa as *const libc::sockaddr_storage).cast(), len) != 0 {
            bail!("binding {src}: {}", std::io::Error::last_os_error());
        }
        let (da, dlen) = sockaddr(dst);
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        if libc::connect(fd, (&da as *const libc::sockaddr_storage).cast(), dlen) != 0 {
            bail!(
                "connecting {src} -> {dst}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(s)
    }
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data large enough for both families.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_urls_parse_and_refuse_outside_addresses() {
        let (s, a, p) = parse_probe_url("http://198.18.0.11:30080/x").unwrap();
        assert_eq!(
            (s.as_str(), a.to_string().as_str(), p.as_str()),
            ("http", "198.18.0.11:30080", "/x")
        );
        let (s, a, _) = parse_probe_url("udp://[2001:db8::5]:9000").unwrap();
        assert_eq!((s.as_str(), a.port()), ("udp", 9000));
        for bad in [
            "http://10.0.0.1:80",
            "ftp://198.18.0.1:21",
            "tcp://198.18.0.1",
            "198.18.0.1:80",
        ] {
            assert!(parse_probe_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn echo_reports_peer_over_every_protocol() {
        // Free ports on loopback; the server thread lives as long as the test process.
        let ports = crate::free_ports(2).unwrap();
        let p = EchoPorts {
            http: ports[0],
            tcp: ports[1],
            udp: ports[1],
            drain: Duration::ZERO,
        };
        std::thread::spawn(move || echo(p));
        let t = Duration::from_secs(3);
        let answer = crate::wait_for("the echo server", t, Duration::from_millis(20), || {
            probe(&format!("http://127.0.0.1:{}/", p.http), t, None).ok()
        })
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["proto"], "http");
        assert_eq!(v["peerIP"], "127.0.0.1");
        assert_eq!(v["pod"], hostname());
        let v: serde_json::Value =
            serde_json::from_str(&probe(&format!("tcp://127.0.0.1:{}", p.tcp), t, None).unwrap())
                .unwrap();
        assert_eq!(v["proto"], "tcp");
        let src: IpAddr = "127.0.0.2".parse().unwrap();
        let v: serde_json::Value = serde_json::from_str(
            &probe(&format!("tcp://127.0.0.1:{}", p.tcp), t, Some(src)).unwrap(),
        )
        .unwrap();
        assert_eq!(v["peerIP"], "127.0.0.2", "bound source address reported");
        let v: serde_json::Value =
            serde_json::from_str(&probe(&format!("udp://127.0.0.1:{}", p.udp), t, None).unwrap())
                .unwrap();
        assert_eq!(v["proto"], "udp");
        assert_eq!(v["peerIP"], "127.0.0.1");
    }
}
