//! The bounded event queue between the client's reader and the application.
//!
//! The reader hands over a whole read's worth of events at once (one channel send and one
//! wakeup per batch, not per message), after taking one credit per event from a semaphore of
//! `max_backlog` credits; the application returns a batch's credits when it has taken its
//! last event. So at most `max_backlog` events wait, and when the application falls behind the
//! reader stops reading and TCP pushes back on the server. Never drops an event.

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, Semaphore};

use super::Event;

struct Batch {
    events: Vec<Event>,
    credits: u32,
}

/// The reader's end.
pub struct EventSink {
    tx: mpsc::UnboundedSender<Batch>,
    credits: Arc<Semaphore>,
    max: u32,
}

/// The application's end.
pub struct EventSource {
    rx: mpsc::UnboundedReceiver<Batch>,
    credits: Arc<Semaphore>,
    current: std::vec::IntoIter<Event>,
    owed: u32,
}

/// A queue holding at most `max_backlog` events (at least 1).
pub fn event_queue(max_backlog: usize) -> (EventSink, EventSource) {
    let max = u32::try_from(max_backlog.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
    let credits = Arc::new(Semaphore::new(max as usize));
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = EventSink { tx, credits: credits.clone(), max };
    (sink, EventSource { rx, credits, current: Vec::new().into_iter(), owed: 0 })
}

/// A queue that is already closed.
pub fn closed() -> EventSource {
    event_queue(1).1
}

impl EventSink {
    /// Hands `events` over once the application has room; false if it is gone.
    pub async fn send(&self, events: Vec<Event>) -> bool {
        if events.is_empty() {
            return true;
        }
        // A batch larger than the whole bound takes all credits: it waits for an empty queue.
        let credits = u32::try_from(events.len()).unwrap_or(u32::MAX).min(self.max);
        match self.credits.acquire_many(credits).await {
            Ok(permit) => permit.forget(),
            Err(_) => return false,
        }
        self.tx.send(Batch { events, credits }).is_ok()
    }
}

impl EventSource {
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            if let Some(e) = self.next_buffered() {
                return Poll::Ready(Some(e));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(batch)) => self.start(batch),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The next event if one is queued; never waits. `Err(())`: the queue is closed.
    pub fn try_next(&mut self) -> Result<Option<Event>, ()> {
        loop {
            if let Some(e) = self.next_buffered() {
                return Ok(Some(e));
            }
            match self.rx.try_recv() {
                Ok(batch) => self.start(batch),
                Err(mpsc::error::TryRecvError::Empty) => return Ok(None),
                Err(mpsc::error::TryRecvError::Disconnected) => return Err(()),
            }
        }
    }

    fn next_buffered(&mut self) -> Option<Event> {
        let e = self.current.next();
        // Credits go back with the batch's last event, so the reader resumes at once.
        if self.current.len() == 0 && self.owed > 0 {
            self.credits.add_permits(std::mem::take(&mut self.owed) as usize);
        }
        e
    }

    fn start(&mut self, batch: Batch) {
        self.current = batch.events.into_iter();
        self.owed = batch.credits;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn err(n: usize) -> Event {
        Event::Error { code: crate::proto::ErrorCode::NotMember, message: n.to_string() }
    }

    #[tokio::test]
    async fn the_reader_waits_for_room_and_order_is_kept() {
        let (sink, mut source) = event_queue(4);
        assert!(sink.send((0..3).map(err).collect()).await);
        // Two more do not fit (3 of 4 credits taken) until the application takes the batch.
        let blocked = tokio::time::timeout(Duration::from_millis(50), sink.send(vec![err(3), err(4)])).await;
        assert!(blocked.is_err(), "sent past the bound");
        let mut seen = Vec::new();
        while let Ok(Some(Event::Error { message, .. })) = source.try_next() {
            seen.push(message);
        }
        assert_eq!(seen, ["0", "1", "2"]);
        assert!(sink.send(vec![err(3), err(4)]).await, "room once the batch was taken");
        assert!(matches!(source.try_next(), Ok(Some(Event::Error { message, .. })) if message == "3"));
        // An oversized batch waits for an empty queue, then goes through whole.
        let big = tokio::spawn(async move {
            let ok = sink.send((10..20).map(err).collect()).await;
            (ok, sink)
        });
        assert!(matches!(source.try_next(), Ok(Some(Event::Error { message, .. })) if message == "4"));
        let (ok, sink) = tokio::time::timeout(Duration::from_secs(10), big).await.unwrap().unwrap();
        assert!(ok);
        let mut n = 0;
        while let Ok(Some(_)) = source.try_next() {
            n += 1;
        }
        assert_eq!(n, 10);
        drop(sink);
        assert!(source.try_next().is_err(), "closed once the reader is gone");
    }

    #[tokio::test]
    async fn a_gone_application_stops_the_reader() {
        let (sink, source) = event_queue(2);
        drop(source);
        assert!(!sink.send(vec![err(0)]).await);
    }
}
