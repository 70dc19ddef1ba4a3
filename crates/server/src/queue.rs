//! The bounded outbound queue of one socket, which allocates nothing until used.
//!
//! Besides messages it carries one control item (such as "close now"), which skips
//! the line and the capacity limit: the socket's task learns everything it must act
//! on from this one queue, so it waits on nothing else but its connection.
//!
//! tokio's `mpsc::channel` allocates its state and a first block of 32 slots (about
//! 1.5 KiB) when it is created. Every open `/join` socket has a queue, and most never
//! receive a message, so that was the largest part of an idle socket's memory. This
//! queue is one small `Arc` (a mutex around a `VecDeque`, which allocates on the first
//! message, and an `AtomicWaker`), with the same `try_send` / `recv` semantics: bounded,
//! never blocks the sender, ends when every sender is gone.

use std::collections::VecDeque;
#[cfg(test)]
use std::future::{Future, poll_fn};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// Sends into a queue; cloning adds a sender.
#[derive(Debug)]
pub(crate) struct Sender<T, C> {
    inner: Arc<Inner<T, C>>,
}

/// Receives from a queue; dropping it closes the queue.
#[derive(Debug)]
pub(crate) struct Receiver<T, C> {
    inner: Arc<Inner<T, C>>,
}

/// What [`Receiver::recv`] returns.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received<T, C> {
    /// A queued message.
    Message(T),
    /// The control item, which comes before any message.
    Control(C),
}

/// Why [`Sender::try_send`] did not queue the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrySendError {
    /// The queue holds `capacity` items or `max_bytes` bytes.
    Full,
    /// The process-wide [`Budget`] is spent.
    OverBudget,
    /// The receiver is gone.
    Closed,
}

/// The size in bytes an item counts for.
pub(crate) trait Weigh {
    /// Bytes this item holds.
    fn weight(&self) -> usize;
}

impl Weigh for String {
    fn weight(&self) -> usize {
        self.len()
    }
}

/// Bytes held in all queues (and, while they are written, in the sockets' write
/// buffers) together, against a limit: what the process holds for slow readers stays
/// bounded however many sockets there are.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Takes `bytes` from the budget, unless that would spend more than the limit.
    pub(crate) fn try_reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Gives `bytes` back.
    pub(crate) fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// Bytes in use.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
struct Inner<T, C> {
    state: Mutex<State<T, C>>,
    waker: AtomicWaker,
    capacity: usize,
    max_bytes: usize,
    budget: Arc<Budget>,
}

#[derive(Debug)]
struct State<T, C> {
    items: VecDeque<T>,
    /// Bytes of `items`.
    bytes: usize,
    /// A message was refused for its bytes since the receiver last took one.
    refused: bool,
    control: Option<C>,
    senders: usize,
    receiver_alive: bool,
}

/// A queue that holds at most `capacity` messages of `max_bytes` in all, and one
/// control item; what it holds is also taken from `budget`. Bytes the receiver takes
/// stay spent in `budget` until it [releases](Budget::release) them (once written).
pub(crate) fn channel<T, C>(
    capacity: usize,
    max_bytes: usize,
    budget: Arc<Budget>,
) -> (Sender<T, C>, Receiver<T, C>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            items: VecDeque::new(),
            bytes: 0,
            refused: false,
            control: None,
            senders: 1,
            receiver_alive: true,
        }),
        waker: AtomicWaker::new(),
        capacity,
        max_bytes,
        budget,
    });
    (
        Sender {
            inner: Arc::clone(&inner),
        },
        Receiver { inner },
    )
}

impl<T, C> Inner<T, C> {
    fn lock(&self) -> MutexGuard<'_, State<T, C>> {
        // Nothing panics while holding the lock; the state stays consistent anyway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Weigh, C: Ord> Sender<T, C> {
    /// Queues `item` unless the queue is full or closed, or the budget is spent. Never
    /// waits.
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError> {
        let weight = item.weight();
        {
            let mut state = self.inner.lock();
            if !state.receiver_alive {
                return Err(TrySendError::Closed);
            }
            if state.items.len() >= self.inner.capacity {
                return Err(TrySendError::Full);
            }
            if state.bytes.saturating_add(weight) > self.inner.max_bytes {
                state.refused = true;
                return Err(TrySendError::Full);
            }
            if !self.inner.budget.try_reserve(weight) {
                return Err(TrySendError::OverBudget);
            }
            state.bytes += weight;
            state.items.push_back(item);
        }
        self.inner.waker.wake();
        Ok(())
    }

    /// Sets the control item, which the receiver gets before any message. A pending
    /// control item is only replaced by a greater one. Never waits.
    pub(crate) fn control(&self, control: C) -> Result<(), TrySendError> {
        {
            let mut state = self.inner.lock();
            if !state.receiver_alive {
                return Err(TrySendError::Closed);
            }
            if state
                .control
                .as_ref()
                .is_none_or(|pending| control > *pending)
            {
                state.control = Some(control);
            }
        }
        self.inner.waker.wake();
        Ok(())
    }
}

impl<T, C> Clone for Sender<T, C> {
    fn clone(&self) -> Self {
        self.inner.lock().senders += 1;
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T, C> Drop for Sender<T, C> {
    fn drop(&mut self) {
        let last = {
            let mut state = self.inner.lock();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.inner.waker.wake();
        }
    }
}

/// Above this many slots, an emptied queue gives its buffer back.
const KEEP_SLOTS: usize = 8;

impl<T: Weigh, C> Receiver<T, C> {
    /// [`Self::poll_recv`] as a future.
    #[cfg(test)]
    pub(crate) fn recv(&mut self) -> impl Future<Output = Option<Received<T, C>>> {
        poll_fn(|cx| self.poll_recv(cx))
    }

    /// The control item if one is pending, else the next message; `None` once the
    /// queue is empty and every sender is gone. Registers `cx` to be woken when that
    /// changes. An item is only taken when this returns it.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Received<T, C>>> {
        // Register before looking, so an item queued right after the look wakes us.
        self.inner.waker.register(cx.waker());
        let mut state = self.inner.lock();
        if let Some(control) = state.control.take() {
            return Poll::Ready(Some(Received::Control(control)));
        }
        match state.items.pop_front() {
            Some(item) => {
                state.bytes -= item.weight();
                state.refused = false;
                Poll::Ready(Some(Received::Message(item)))
            }
            None if state.senders == 0 => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    /// The control item, if one is pending and `wanted` says so; messages stay queued.
    /// Registers `cx` to be woken when an item arrives.
    pub(crate) fn poll_control(
        &mut self,
        cx: &mut Context<'_>,
        wanted: impl FnOnce(&C) -> bool,
    ) -> Poll<C> {
        self.inner.waker.register(cx.waker());
        let mut state = self.inner.lock();
        match state.control.take_if(|control| wanted(control)) {
            Some(control) => Poll::Ready(control),
            None => Poll::Pending,
        }
    }

    /// Takes up to `max` queued items of at most `max_bytes` in all without waiting,
    /// passing each to `each`.
    pub(crate) fn drain_each(&mut self, max: usize, max_bytes: usize, mut each: impl FnMut(T)) {
        let mut state = self.inner.lock();
        let mut taken = 0;
        for _ in 0..max {
            let Some(weight) = state.items.front().map(Weigh::weight) else {
                break;
            };
            if taken + weight > max_bytes {
                break;
            }
            taken += weight;
            state.bytes -= weight;
            state.refused = false;
            if let Some(item) = state.items.pop_front() {
                each(item);
            }
        }
        if state.items.is_empty() && state.items.capacity() > KEEP_SLOTS {
            state.items = VecDeque::new();
        }
    }

    /// Whether the queue holds `capacity` items, or refused a message for its bytes
    /// since the receiver last took one.
    pub(crate) fn is_full(&self) -> bool {
        let state = self.inner.lock();
        state.items.len() >= self.inner.capacity || state.refused
    }
}

impl<T, C> Drop for Receiver<T, C> {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.receiver_alive = false;
        state.items = VecDeque::new();
        self.inner.budget.release(std::mem::take(&mut state.bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Queue<T> = (Sender<T, u8>, Receiver<T, u8>);

    impl Weigh for i32 {
        fn weight(&self) -> usize {
            4
        }
    }

    impl Weigh for &str {
        fn weight(&self) -> usize {
            self.len()
        }
    }

    /// A queue of `capacity` items, unbounded in bytes.
    fn channel<T, C>(capacity: usize) -> (Sender<T, C>, Receiver<T, C>) {
        super::channel(capacity, usize::MAX, Arc::new(Budget::new(usize::MAX)))
    }

    #[tokio::test]
    async fn bytes_are_bounded_per_queue_and_in_all_queues_together() {
        let budget = Arc::new(Budget::new(10));
        let (a, mut a_rx): Queue<&str> = super::channel(10, 6, Arc::clone(&budget));
        let (b, b_rx): Queue<&str> = super::channel(10, 100, Arc::clone(&budget));
        assert_eq!(a.try_send("abcd"), Ok(()));
        assert_eq!(
            a.try_send("efg"),
            Err(TrySendError::Full),
            "6 bytes per queue"
        );
        assert!(a_rx.is_full(), "refused for its bytes");
        assert_eq!(a.try_send("ef"), Ok(()));
        assert_eq!(
            b.try_send("hijkl"),
            Err(TrySendError::OverBudget),
            "10 in all"
        );
        assert_eq!(b.try_send("hijk"), Ok(()));
        assert_eq!(budget.used(), 10);
        // Taken bytes stay spent until released (written); the queue has room again.
        let mut taken = Vec::new();
        a_rx.drain_each(10, 5, |item| taken.push(item));
        assert_eq!(taken, ["abcd"], "up to 5 bytes");
        assert!(!a_rx.is_full());
        assert_eq!(budget.used(), 10);
        budget.release(4);
        assert_eq!(a.try_send("xy"), Ok(()));
        assert_eq!(budget.used(), 8);
        drop(b_rx);
        assert_eq!(budget.used(), 4, "a dropped receiver gives its bytes back");
    }

    fn message<T>(item: T) -> Option<Received<T, u8>> {
        Some(Received::Message(item))
    }

    #[tokio::test]
    async fn bounded_fifo_that_ends_with_its_senders() {
        let (tx, mut rx): Queue<i32> = channel(2);
        assert_eq!(tx.try_send(1), Ok(()));
        let tx2 = tx.clone();
        assert_eq!(tx2.try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Err(TrySendError::Full));
        assert!(rx.is_full());
        assert_eq!(rx.recv().await, message(1));
        let mut out = Vec::new();
        rx.drain_each(10, usize::MAX, |item| out.push(item));
        assert_eq!(out, [2]);
        drop(tx);
        assert_eq!(tx2.try_send(4), Ok(()));
        drop(tx2);
        assert_eq!(rx.recv().await, message(4));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn wakes_a_waiting_receiver_and_reports_a_closed_queue() {
        let (tx, mut rx): Queue<&str> = channel(4);
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await;
            (first, rx)
        });
        tokio::task::yield_now().await;
        assert_eq!(tx.try_send("x"), Ok(()));
        let (first, rx) = waiter.await.expect("task");
        assert_eq!(first, message("x"));
        drop(rx);
        assert_eq!(tx.try_send("y"), Err(TrySendError::Closed));
        assert_eq!(tx.control(1), Err(TrySendError::Closed));
    }

    #[tokio::test]
    async fn a_control_item_can_be_taken_alone_and_only_when_wanted() {
        let (tx, mut rx): Queue<&str> = channel(4);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert_eq!(rx.poll_control(&mut cx, |_| true), Poll::Pending);
        tx.try_send("a").expect("room");
        tx.control(1).expect("open");
        assert_eq!(rx.poll_control(&mut cx, |c| *c > 1), Poll::Pending);
        assert_eq!(rx.poll_control(&mut cx, |c| *c == 1), Poll::Ready(1));
        assert_eq!(rx.recv().await, message("a"), "messages stay queued");
    }

    #[tokio::test]
    async fn the_control_item_skips_the_line_and_only_a_greater_one_replaces_it() {
        let (tx, mut rx): Queue<&str> = channel(1);
        assert_eq!(tx.try_send("a"), Ok(()));
        assert_eq!(
            tx.control(2),
            Ok(()),
            "a full queue still takes a control item"
        );
        assert_eq!(tx.control(1), Ok(()));
        assert_eq!(rx.recv().await, Some(Received::Control(2)));
        assert_eq!(tx.control(1), Ok(()));
        assert_eq!(tx.control(3), Ok(()));
        assert_eq!(rx.recv().await, Some(Received::Control(3)));
        assert_eq!(rx.recv().await, message("a"));
    }
}
