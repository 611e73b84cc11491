//! No panic passes silently.
//!
//! A panic that client input can cause is a bug, but if one still happens
//! while a connection handles a frame or a delivery, it must cost that one
//! connection only: [`contain`] catches it, the connection logs it once at
//! error level (with its peer and the method it was handling) and closes
//! with `541 INTERNAL_ERROR`, as RabbitMQ does when a channel process
//! crashes. Every other panic is logged at error level by the hook. Both log
//! lines contain `panicked`, which the test harnesses look for in every
//! broker log they capture.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::OnceLock;

thread_local! {
    /// Set while [`contain`] runs: the hook then leaves the logging to it.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
    /// What the last contained panic said, and where.
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Routes panic reports through `tracing` (error level), once each.
pub fn install_hook() {
    panic::set_hook(Box::new(|info| {
        let what = describe(info);
        if CONTAINED.with(|c| c.get()) {
            CAUGHT.with(|c| *c.borrow_mut() = Some(what));
        } else {
            let thread = std::thread::current();
            tracing::error!("thread '{}' panicked at {what}", thread.name().unwrap_or("?"));
        }
    }));
}

fn describe(info: &panic::PanicHookInfo<'_>) -> String {
    let msg = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    match info.location() {
        Some(l) => format!("{}:{}: {msg}", l.file(), l.line()),
        None => msg,
    }
}

/// A panic caught by [`contain`]: where it happened and its message
/// (`file:line: message`).
#[derive(Debug)]
pub struct Panic(pub String);

impl std::fmt::Display for Panic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs `f`; a panic in it comes back as `Err(Panic)` instead of unwinding
/// further. The caller logs it.
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, Panic> {
    let outer = CONTAINED.with(|c| c.replace(true));
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(outer));
    r.map_err(|_| Panic(CAUGHT.with(|c| c.borrow_mut().take()).unwrap_or_else(|| "(unknown)".to_owned())))
}

/// Fault injection for tests: `WARREN_FAULT_PANIC_QUEUE=NAME` makes
/// declaring a queue of that name panic, so the suite can check what a
/// panic costs (one connection, closed with 541) and that it is logged.
/// Read only in builds with the `fault-injection` feature.
pub fn fault_panic_queue() -> Option<&'static str> {
    if !cfg!(feature = "fault-injection") {
        return None;
    }
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| std::env::var("WARREN_FAULT_PANIC_QUEUE").ok()).as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contained_panics_come_back_with_their_message() {
        install_hook();
        let r: Result<(), Panic> = contain(|| panic!("boom {}", 7));
        let e = r.unwrap_err();
        assert!(e.0.contains("boom 7") && e.0.contains("panics.rs"), "{e}");
        assert_eq!(contain(|| 5).unwrap(), 5);
        assert!(!CONTAINED.with(|c| c.get()));
    }
}
