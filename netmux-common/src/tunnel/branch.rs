//! Futures that share one task, each polled only when its own waker fired.
//!
//! `tokio::select!` polls every branch on every wakeup of its task. In
//! [`super::pipe::bridge`] that meant a response arriving on the stream also polled
//! the TCP read and the stream's `stopped` notification, and a request
//! arriving on TCP also polled the stream's read, which locks the QUIC
//! connection and moves the stream's receive state out of its map and back.
//! Such polls, which could only say "not yet", took about a tenth of the
//! instructions of a request at each end (callgrind, redis GET with 50
//! clients: 17.0 k → 15.4 k per request; BENCHMARKS.md History 2026-12-04
//! 15:30–16:10).
//!
//! A [`Branch`] hands its future a waker of its own, which marks the branch
//! and then wakes the task; the task polls only marked branches. This is what
//! `FuturesUnordered` does for many futures of one type, for a fixed set of
//! futures of different types.
//!
//! Used by [`super::pipe::bridge`] (TCP ↔ QUIC stream, per connection) and by
//! [`super::stream_socket`]'s pump (the QUIC-over-TCP transport, where each
//! datagram read from the byte stream would otherwise also poll the writer,
//! and each datagram queued for it the reader).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// One future's slot in a task that polls several.
pub(crate) struct Branch {
    mark: Arc<Mark>,
    waker: Waker,
}

/// Set by the branch's waker; holds the waker of the task to wake with it.
struct Mark {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Mark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl Branch {
    /// A branch that is polled on the first call of [`Branch::poll`].
    pub(crate) fn new() -> Self {
        let mark = Arc::new(Mark {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        let waker = Waker::from(mark.clone());
        Branch { mark, waker }
    }

    /// Polls `fut` if its waker fired since its last poll (or it was never
    /// polled); otherwise `Pending` without touching it. Either way the
    /// branch's waker wakes the task that `cx` belongs to.
    pub(crate) fn poll<F: Future + ?Sized>(
        &self,
        fut: Pin<&mut F>,
        cx: &Context<'_>,
    ) -> Poll<F::Output> {
        {
            let mut task = self
                .mark
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match task.as_ref() {
                Some(t) if t.will_wake(cx.waker()) => {}
                _ => *task = Some(cx.waker().clone()),
            }
        }
        // Cleared before the poll: a wakeup during it marks the branch again.
        if !self.mark.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        fut.poll(&mut Context::from_waker(&self.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts its polls; `Ready` once `ready` is set, else keeps the waker.
    #[derive(Default)]
    struct Probe {
        polls: usize,
        ready: bool,
        waker: Option<Waker>,
    }

    impl Future for Probe {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.ready {
                return Poll::Ready(self.polls);
            }
            self.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[derive(Default)]
    struct TaskWakes(AtomicUsize);

    impl Wake for TaskWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn only_the_woken_branch_is_polled_and_its_wakeup_wakes_the_task() {
        let task = Arc::new(TaskWakes::default());
        let task_waker = Waker::from(task.clone());
        let cx = Context::from_waker(&task_waker);
        let (a, b) = (Branch::new(), Branch::new());
        let (mut fa, mut fb) = (Probe::default(), Probe::default());

        // The first poll reaches both futures.
        assert!(a.poll(Pin::new(&mut fa), &cx).is_pending());
        assert!(b.poll(Pin::new(&mut fb), &cx).is_pending());
        assert_eq!((fa.polls, fb.polls), (1, 1));

        // Nothing woke either: neither is polled again.
        assert!(a.poll(Pin::new(&mut fa), &cx).is_pending());
        assert!(b.poll(Pin::new(&mut fb), &cx).is_pending());
        assert_eq!((fa.polls, fb.polls), (1, 1));

        // b's waker fires: the task is woken, and only b is polled.
        fb.waker.take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        fb.ready = true;
        assert!(a.poll(Pin::new(&mut fa), &cx).is_pending());
        assert_eq!(b.poll(Pin::new(&mut fb), &cx), Poll::Ready(2));
        assert_eq!(fa.polls, 1);

        // a's waker, cloned and woken by reference, works the same way.
        let wa = fa.waker.take().unwrap();
        wa.wake_by_ref();
        assert_eq!(task.0.load(Ordering::SeqCst), 2);
        fa.ready = true;
        assert_eq!(a.poll(Pin::new(&mut fa), &cx), Poll::Ready(2));
    }

    #[test]
    fn a_wakeup_during_the_poll_is_kept_and_a_new_task_waker_is_used() {
        /// Wakes itself while being polled (as a future does when it yields
        /// to tokio's cooperative budget), the first time only.
        struct Yields(usize);
        impl Future for Yields {
            type Output = ();
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                self.0 += 1;
                if self.0 == 1 {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(())
            }
        }
        let first = Arc::new(TaskWakes::default());
        let second = Arc::new(TaskWakes::default());
        let (w1, w2) = (Waker::from(first.clone()), Waker::from(second.clone()));
        let branch = Branch::new();
        let mut fut = Yields(0);
        assert!(branch
            .poll(Pin::new(&mut fut), &Context::from_waker(&w1))
            .is_pending());
        assert_eq!(first.0.load(Ordering::SeqCst), 1);
        // Polled from another task's context: that task's waker is kept.
        assert!(branch
            .poll(Pin::new(&mut fut), &Context::from_waker(&w2))
            .is_ready());
        assert_eq!(fut.0, 2);
        let mut again = Yields(1);
        let other = Branch::new();
        assert!(other
            .poll(Pin::new(&mut again), &Context::from_waker(&w2))
            .is_ready());
        Waker::from(other.mark.clone()).wake();
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert_eq!(first.0.load(Ordering::SeqCst), 1);
    }
}
