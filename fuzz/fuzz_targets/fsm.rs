//! The session FSM driven by arbitrary event sequences (it is pure, so no
//! socket is needed): it must never panic, never act on a connection it
//! closed or never had, and with the shutdown action never hold more
//! prefixes than the limit once an event has been handled.
#![no_main]
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use berth_bgp::codec::{self, Message, Notification, Update};
use berth_bgp::fsm::{
    Action, ConnError, ConnId, Event, Fsm, FsmConfig, LocalOpen, Settings, StopMode, Timer,
};
use berth_bgp::rib_out::Families;
use berth_bgp::{LimitAction, PrefixLimits};
use libfuzzer_sys::fuzz_target;

fn local(asn: u32, id: u8, hold: u16) -> LocalOpen {
    LocalOpen {
        local_as: asn,
        router_id: Ipv4Addr::new(198, 18, 0, id),
        hold_time: hold,
        families: Families { v4: true, v6: true },
        gr_restart_time: Some(120),
        gr_restarting: true,
    }
}

fn limits(b: u8) -> PrefixLimits {
    PrefixLimits {
        ipv4: Some(u32::from(b % 8) + 1),
        ipv6: Some(u32::from(b / 8 % 8) + 1),
        action: if b & 0x80 != 0 {
            LimitAction::Warn
        } else {
            LimitAction::Shutdown
        },
        restart: (b & 0x40 != 0).then(|| Duration::from_secs(60)),
        warning_pct: 75,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let mut lim = limits(first);
    let mut fsm = Fsm::new(FsmConfig {
        local: local(64513, 11, 9),
        remote_as: 64512,
        settings: Settings {
            passive: first & 1 != 0,
            connect_retry: Duration::from_secs(1),
            limits: lim,
        },
    });
    let mut open: BTreeSet<u64> = BTreeSet::new();
    let mut closed: BTreeSet<u64> = BTreeSet::new();
    let mut next = 0u64;
    while let Some((&k, r)) = rest.split_first() {
        rest = r;
        let arg = rest.first().copied().unwrap_or(0);
        let conn = ConnId(
            open.iter()
                .nth(usize::from(arg % 3))
                .copied()
                .unwrap_or(next),
        );
        let ev = match k % 13 {
            0 => Event::Start,
            1 => {
                next += 1;
                Event::Connected {
                    conn: ConnId(next),
                    outgoing: arg & 1 != 0,
                }
            }
            2 => {
                let mut p = local(
                    64512,
                    if arg & 1 != 0 { 200 } else { 1 },
                    u16::from(arg >> 1),
                );
                p.gr_restart_time = (arg & 0x80 != 0).then_some(90);
                Event::Received {
                    conn,
                    msg: Message::Open(p.message()),
                }
            }
            3 => Event::Received {
                conn,
                msg: Message::Keepalive,
            },
            4 => {
                // An UPDATE: attributes and NLRI from the input.
                let n = usize::from(arg).min(rest.len());
                let (chunk, r) = rest.split_at(n);
                rest = r;
                let (attrs, nlri) = chunk.split_at(chunk.len() / 2);
                let nlri = codec::decode_prefixes(nlri, false).unwrap_or_default();
                Event::Received {
                    conn,
                    msg: Message::Update(Update {
                        withdrawn: vec![],
                        attributes: attrs.to_vec(),
                        nlri,
                    }),
                }
            }
            5 => {
                // Any message the decoder accepts.
                let n = usize::from(arg).min(rest.len());
                let (chunk, r) = rest.split_at(n);
                rest = r;
                match codec::decode(chunk) {
                    Ok(msg) => Event::Received { conn, msg },
                    Err(e) => Event::ConnError {
                        conn,
                        error: ConnError::Decode(e),
                    },
                }
            }
            6 => Event::Timer(match arg % 5 {
                0 => Timer::ConnectRetry,
                1 => Timer::OpenWait,
                2 => Timer::Hold,
                3 => Timer::Keepalive,
                _ => Timer::LimitRestart,
            }),
            7 => Event::ConnError {
                conn,
                error: ConnError::Closed("eof".into()),
            },
            8 => Event::BfdDown,
            9 => Event::Stop {
                mode: if arg & 1 != 0 {
                    StopMode::Silent
                } else {
                    StopMode::Cease(arg >> 1)
                },
                reason: "fuzz".into(),
            },
            10 => {
                lim = limits(arg);
                Event::Reconfigure(Settings {
                    passive: arg & 1 != 0,
                    connect_retry: Duration::from_secs(1),
                    limits: lim,
                })
            }
            11 => Event::ConnectFailed("refused".into()),
            _ => Event::Received {
                conn,
                msg: Message::Notification(Notification {
                    code: 6,
                    subcode: arg,
                    data: vec![],
                }),
            },
        };
        if let Event::Connected { conn, .. } = &ev {
            open.insert(conn.0);
        }
        for a in fsm.handle(ev) {
            match a {
                Action::Send { conn, .. }
                | Action::Negotiated { conn, .. }
                | Action::Established { conn, .. } => {
                    assert!(
                        open.contains(&conn.0) && !closed.contains(&conn.0),
                        "{a:?} on a closed or unknown connection"
                    );
                }
                Action::Close { conn } => {
                    assert!(open.remove(&conn.0), "closing {conn:?} twice or unknown");
                    closed.insert(conn.0);
                }
                _ => {}
            }
        }
        let st = fsm.status();
        if lim.action == LimitAction::Shutdown {
            assert!(st.received_v4 <= lim.ipv4.unwrap_or(u32::MAX) as usize);
            assert!(st.received_v6 <= lim.ipv6.unwrap_or(u32::MAX) as usize);
        }
        assert!(open.len() <= 2, "more than two connections kept: {open:?}");
    }
});
