//! `berth-ipam`: Berth's CNI IPAM plugin binary. The logic lives in `berth_cni::plugin`; this file
//! only gives it a process, in the package that ships every Berth binary.
//!
//! `no_main`: a runtime starts one plugin process per ADD and DEL, and Rust's start-up (signal
//! stacks and handlers for stack overflows, the main thread's name) is work this short-lived
//! process does not need; glibc still runs its own start-up, so `std` works as usual. The one
//! piece kept is Rust's SIGPIPE setting: ignored, so a runtime that closed its end of stdout
//! gets an error written nowhere instead of a plugin killed by a signal. (Not under `cargo test`,
//! whose harness brings its own `main`.)
#![cfg_attr(not(test), no_main)]

/// The C entry point glibc calls.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    berth_cni::plugin::main();
    0
}
