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
    /// The queue holds `capacity` items.
    Full,
    /// The receiver is gone.
    Closed,
}

#[derive(Debug)]
struct Inner<T, C> {
    state: Mutex<State<T, C>>,
    waker: AtomicWaker,
    capacity: usize,
}

#[derive(Debug)]
struct State<T, C> {
    items: VecDeque<T>,
    control: Option<C>,
    senders: usize,
    receiver_alive: bool,
}

/// A queue that holds at most `capacity` messages and one control item.
pub(crate) fn channel<T, C>(capacity: usize) -> (Sender<T, C>, Receiver<T, C>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            items: VecDeque::new(),
            control: None,
            senders: 1,
            receiver_alive: true,
        }),
        waker: AtomicWaker::new(),
        capacity,
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

impl<T, C: Ord> Sender<T, C> {
    /// Queues `item` unless the queue is full or closed. Never waits.
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError> {
        {
            let mut state = self.inner.lock();
            if !state.receiver_alive {
                return Err(TrySendError::Closed);
            }
            if state.items.len() >= self.inner.capacity {
                return Err(TrySendError::Full);
            }
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

impl<T, C> Receiver<T, C> {
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
            Some(item) => Poll::Ready(Some(Received::Message(item))),
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

    /// Takes up to `max` queued items without waiting, passing each to `each`.
    pub(crate) fn drain_each(&mut self, max: usize, each: impl FnMut(T)) {
        let mut state = self.inner.lock();
        let n = state.items.len().min(max);
        state.items.drain(..n).for_each(each);
        if state.items.is_empty() && state.items.capacity() > KEEP_SLOTS {
            state.items = VecDeque::new();
        }
    }

    /// Whether the queue holds `capacity` items.
    pub(crate) fn is_full(&self) -> bool {
        self.inner.lock().items.len() >= self.inner.capacity
    }
}

impl<T, C> Drop for Receiver<T, C> {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.receiver_alive = false;
        state.items = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Queue<T> = (Sender<T, u8>, Receiver<T, u8>);

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
        rx.drain_each(10, |item| out.push(item));
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
