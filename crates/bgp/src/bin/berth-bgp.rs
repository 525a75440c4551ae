//! Stand-alone speaker binary with the same behaviour as `berth bgp`; the
//! interop tests run it because Cargo builds a crate's own binaries for its
//! integration tests (`CARGO_BIN_EXE_berth-bgp`).

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let path = match (args.next().as_deref(), args.next()) {
        (Some("--config"), Some(p)) => p,
        _ => {
            eprintln!("usage: berth-bgp --config FILE");
            return std::process::ExitCode::from(2);
        }
    };
    berth_bgp::runner::main_with(path.into())
}
