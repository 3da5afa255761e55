//! Helpers shared by the benchmarks: poll a future that never waits, and
//! make deterministic keys.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(unused_crate_dependencies))]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Polls `f` once with a no-op waker. The verifiers benchmarked here never
/// wait, so this measures their work without an executor's overhead.
pub fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("benchmarked future was not ready"),
    }
}

/// The `i`-th benchmark key: 64 lowercase hex characters, like a key file's.
pub fn key(i: u64) -> String {
    format!(
        "{:016x}{:016x}{:016x}{:016x}",
        i,
        !i,
        i.rotate_left(17),
        i ^ 0x5bd1_e995
    )
}

/// A small xorshift generator for picking keys without a dependency.
#[derive(Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    /// The next value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_64_hex_and_distinct() {
        assert_eq!(super::key(1).len(), 64);
        assert_ne!(super::key(1), super::key(2));
    }
}
