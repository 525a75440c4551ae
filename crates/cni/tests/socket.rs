//! Agent wire format and framing.

use berth_cni::env::parse_env_map;
use berth_cni::socket::{read_frame, write_frame, Request, RequestConfig, Response, MAX_FRAME};
use berth_cni::{parse_config, CniError};
use std::collections::HashMap;
use std::io::{BufReader, Cursor};

const CONF: &str = include_str!("fixtures/kube-ipam-seed-001-corrected.conf");

fn env() -> berth_cni::CniEnv {
    let vars: HashMap<String, String> = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/c1"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;IP=10.188.0.20",
        ),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    parse_env_map(&vars).expect("env")
}

#[test]
fn requests_and_responses_round_trip_in_frames() {
    let raw = Request::new(&env(), RequestConfig::Raw(CONF.to_string()));
    let parsed = Request::new(
        &env(),
        RequestConfig::Parsed(Box::new(parse_config(CONF.as_bytes()).expect("conf"))),
    );
    let ok = Response::Ok {
        result: Some(serde_json::json!({"cniVersion": "0.3.1", "ips": []})),
    };
    let err = Response::Error {
        error: CniError::new(11, "ledger busy").with_details("line1\nline2"),
    };
    let mut buf = vec![];
    write_frame(&mut buf, &raw).expect("w");
    write_frame(&mut buf, &parsed).expect("w");
    write_frame(&mut buf, &ok).expect("w");
    write_frame(&mut buf, &err).expect("w");
    assert_eq!(
        buf.iter().filter(|b| **b == b'\n').count(),
        4,
        "one line per frame"
    );
    let mut r = BufReader::new(Cursor::new(buf));
    assert_eq!(read_frame::<_, Request>(&mut r).expect("r"), Some(raw));
    assert_eq!(read_frame::<_, Request>(&mut r).expect("r"), Some(parsed));
    assert_eq!(
        read_frame::<_, Response>(&mut r).expect("r"),
        Some(ok.clone())
    );
    let back: Response = read_frame(&mut r).expect("r").expect("frame");
    assert_eq!(back, err);
    assert_eq!(back.into_result().expect_err("err").code, 11);
    assert_eq!(read_frame::<_, Response>(&mut r).expect("eof"), None);
    assert!(ok.into_result().expect("ok").is_some());
}

#[test]
fn frame_errors() {
    let e = read_frame::<_, Response>(&mut Cursor::new(b"{\"status\":\"ok\"".to_vec()))
        .expect_err("cut");
    assert_eq!(e.code, 6);
    let e = read_frame::<_, Response>(&mut Cursor::new(b"{\"status\":\"maybe\"}\n".to_vec()))
        .expect_err("bad");
    assert_eq!(e.code, 6);
    assert!(e.msg.contains("line 1"), "{}", e.msg);
    let big = vec![b'x'; MAX_FRAME + 1];
    let e = read_frame::<_, Response>(&mut Cursor::new(big)).expect_err("big");
    assert_eq!(e.code, 6);
}
