//! [`Answer`]: a value now, or a future for it — the one return type of
//! every step that may have to wait ([`Verifier::verify`](crate::Verifier),
//! [`RateLimiter::check`](crate::RateLimiter), [`KeyStore`](crate::KeyStore)
//! lookups and the guard's [`check`](crate::Guard::check)).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A boxed, sendable future that owns what it needs.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A value known now, or a future for it.
///
/// Steps that hold their answer in memory (in-memory keys, cache hits,
/// in-memory rate limits) answer [`Ready`](Answer::Ready): no future is made
/// and nothing is allocated. Steps that must wait return
/// [`Pending`](Answer::Pending) with a future that owns everything it needs
/// (`'static`), so that the caller resumes at that step instead of starting
/// over.
///
/// ```
/// use auth_core::Answer;
///
/// let now: Answer<u32> = Answer::Ready(7);
/// let later: Answer<u32> = Answer::pending(async { 7 });
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// assert_eq!(rt.block_on(now), 7);
/// assert_eq!(rt.block_on(later), 7);
/// ```
#[must_use]
pub enum Answer<T> {
    /// Known now.
    Ready(T),
    /// Known when the future completes.
    Pending(BoxFuture<T>),
}

impl<T> Answer<T> {
    /// An answer that waits for `future`.
    pub fn pending(future: impl Future<Output = T> + Send + 'static) -> Self {
        Self::Pending(Box::pin(future))
    }

    /// The value, if known now.
    pub fn now(self) -> Option<T> {
        match self {
            Self::Ready(v) => Some(v),
            Self::Pending(_) => None,
        }
    }

    /// Whether the value is known now.
    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Ready(_))
    }
}

/// Awaiting an answer gives its value (at once when it is ready). As with
/// any future, polling it again after it completed is a caller's bug: a
/// spent `Ready` never completes again, a spent `Pending` does what its
/// future does (an `async` block panics).
impl<T: 'static> Future for Answer<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        // `Answer` is `Unpin`: its only future is boxed.
        let this = self.get_mut();
        match this {
            Self::Pending(fut) => fut.as_mut().poll(cx),
            // A zero-sized box: no allocation.
            Self::Ready(_) => {
                match std::mem::replace(this, Self::Pending(Box::pin(Spent(PhantomData)))) {
                    Self::Ready(v) => Poll::Ready(v),
                    Self::Pending(_) => unreachable!("matched Ready above"),
                }
            }
        }
    }
}

impl<T> Unpin for Answer<T> {}

/// What an awaited [`Answer::Ready`] leaves behind (zero-sized: its box
/// allocates nothing).
struct Spent<T>(PhantomData<fn() -> T>);

impl<T> Future for Spent<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<T> {
        Poll::Pending
    }
}

impl<T: fmt::Debug> fmt::Debug for Answer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready(v) => f.debug_tuple("Ready").field(v).finish(),
            Self::Pending(_) => f.write_str("Pending(..)"),
        }
    }
}
