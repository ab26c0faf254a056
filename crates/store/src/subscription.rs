use std::collections::VecDeque;
use std::sync::Arc;

use ficus_core::{Position, RecordedEvent};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::{EventStore, LiveBatch, SubscriptionError};

/// Events read from the store per catch-up page.
pub const SUBSCRIPTION_PAGE_EVENTS: usize = 512;

/// Catch-up then live delivery of the global log from any position, in order, with no gap and
/// no duplicate.
///
/// Catch-up reads pages from the store. Once a read comes back empty the subscription joins
/// the live broadcast and reads once more, so an event committed between the last read and
/// joining is found by that read, and one committed after joining arrives live; positions
/// already delivered are dropped, so nothing arrives twice. If a live batch ever skips a
/// position, the subscription falls back to reading the store.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    next_position: Position,
    buffer: VecDeque<RecordedEvent>,
    live: Option<broadcast::Receiver<LiveBatch>>,
    /// Set once a catch-up read found nothing *after* joining the live broadcast.
    is_live: bool,
}

impl Subscription {
    /// Starts delivering at `from_position` (inclusive; 0 and 1 both mean the beginning).
    pub fn new(store: Arc<dyn EventStore>, from_position: Position) -> Self {
        Self {
            store,
            next_position: from_position.max(1),
            buffer: VecDeque::new(),
            live: None,
            is_live: false,
        }
    }

    /// The position the next delivered event will have.
    pub fn next_position(&self) -> Position {
        self.next_position
    }

    /// Whether the subscription has caught up and now receives live batches.
    pub fn is_live(&self) -> bool {
        self.is_live
    }

    /// After [`SubscriptionError::FellBehind`]: go back to catch-up reads from where
    /// delivery stopped. Nothing is skipped.
    pub fn resume(&mut self) {
        self.buffer.clear();
        self.live = None;
        self.is_live = false;
    }

    /// The next event if one is already buffered, without waiting or reading. Lets a consumer
    /// gather a batch after [`Subscription::next`] returned.
    pub fn next_buffered(&mut self) -> Option<RecordedEvent> {
        while let Some(event) = self.buffer.pop_front() {
            if event.position < self.next_position {
                continue;
            }
            assert_eq!(
                event.position, self.next_position,
                "subscription would skip a position"
            );
            self.next_position += 1;
            return Some(event);
        }
        None
    }

    /// The next event. Waits while the subscriber is at the head of the log.
    ///
    /// Cancel-safe: dropping the future loses nothing; the next call resumes where it stood.
    pub async fn next(&mut self) -> Result<RecordedEvent, SubscriptionError> {
        loop {
            if let Some(event) = self.next_buffered() {
                return Ok(event);
            }
            if !self.is_live {
                let page = self
                    .store
                    .read_all(self.next_position, SUBSCRIPTION_PAGE_EVENTS)
                    .await?;
                if !page.is_empty() {
                    self.buffer.extend(page);
                    continue;
                }
                if self.live.is_none() {
                    self.live = Some(self.store.live());
                } else {
                    self.is_live = true;
                }
                continue;
            }
            let rx = self.live.as_mut().expect("live receiver present when live");
            match rx.recv().await {
                Ok(batch) => {
                    let Some(last) = batch.last() else { continue };
                    if last.position < self.next_position {
                        continue;
                    }
                    if batch[0].position > self.next_position {
                        // A position is missing from the live feed: read it from the store.
                        self.is_live = false;
                        continue;
                    }
                    self.buffer.extend(
                        batch
                            .iter()
                            .filter(|e| e.position >= self.next_position)
                            .cloned(),
                    );
                }
                Err(RecvError::Lagged(_)) => {
                    return Err(SubscriptionError::FellBehind {
                        next_position: self.next_position,
                    })
                }
                Err(RecvError::Closed) => return Err(SubscriptionError::Closed),
            }
        }
    }
}
