//! Ctrl-C and SIGTERM for long commands (`run`, `sweep`, `replay`): the first signal asks the
//! running loop to stop at its next event; it closes its Parquet writers (every finished row
//! kept, files readable), keeps its append logs for `--resume`, writes `state: interrupted` in
//! the manifest and exits with 130. A second signal ends the process at once.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
extern "C" fn on_signal(_: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // The second signal: no more waiting.
        unsafe { libc::_exit(130) };
    }
}

/// Catch SIGINT and SIGTERM from now on (commands that can stop cleanly call this).
pub fn install() {
    #[cfg(unix)]
    unsafe {
        let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
    }
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Ask the running loop to stop (what the signal handler does; also for tests).
pub fn request() {
    STOP.store(true, Ordering::SeqCst);
}
