//! The single writer thread: group commit of every queued append.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ficus_core::{ExpectedVersion, NewEvent, Position, RecordedEvent, StreamId, Version};
use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::reader::stream_version;
use super::{unavailable, SqliteConfig};
use crate::{now_ms, AppendResult, LiveBatch, StoreError};

pub(crate) enum WriterMsg {
    Append {
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        reply: oneshot::Sender<Result<AppendResult, StoreError>>,
    },
    Shutdown(oneshot::Sender<()>),
}

type Reply = oneshot::Sender<Result<AppendResult, StoreError>>;

pub(crate) struct Writer {
    conn: Connection,
    head: Arc<AtomicU64>,
    live: broadcast::Sender<LiveBatch>,
    /// Current version of recently written streams. Exact: this thread is the only writer.
    versions: HashMap<StreamId, Version>,
    max_batch_events: usize,
    version_cache_streams: usize,
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        head: Arc<AtomicU64>,
        live: broadcast::Sender<LiveBatch>,
        config: &SqliteConfig,
    ) -> Self {
        Self {
            conn,
            head,
            live,
            versions: HashMap::new(),
            max_batch_events: config.max_batch_events,
            version_cache_streams: config.version_cache_streams,
        }
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>) {
        let mut batch: Vec<WriterMsg> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut events = msg_events(&first);
            batch.push(first);
            // Group commit: take whatever queued while the last batch was being committed.
            while events < self.max_batch_events {
                match rx.try_recv() {
                    Ok(m) => {
                        events += msg_events(&m);
                        batch.push(m);
                    }
                    Err(_) => break,
                }
            }
            if self.commit_batch(&mut batch) {
                return;
            }
        }
    }

    /// Commits one batch and answers its callers. Returns true when asked to shut down.
    fn commit_batch(&mut self, batch: &mut Vec<WriterMsg>) -> bool {
        let mut shutdown: Vec<oneshot::Sender<()>> = Vec::new();
        let mut answers: Vec<(Reply, Result<AppendResult, StoreError>)> = Vec::new();
        let mut committed: Vec<RecordedEvent> = Vec::new();
        let outcome = self.write(batch.drain(..), &mut shutdown, &mut answers, &mut committed);
        match outcome {
            Ok(()) => {
                if let Some(last) = committed.last() {
                    self.head.store(last.position, Ordering::Release);
                    // No receiver is not an error: nobody is listening live right now.
                    let _ = self.live.send(committed.into());
                }
                for (reply, answer) in answers {
                    let _ = reply.send(answer);
                }
            }
            Err(e) => {
                // Nothing of this batch is durable: forget cached versions it may have
                // advanced and fail every caller in it.
                self.versions.clear();
                tracing::error!(error = %e, "event store batch failed; nothing acknowledged");
                for (reply, _) in answers {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        if self.versions.len() > self.version_cache_streams {
            self.versions.clear();
        }
        let stop = !shutdown.is_empty();
        for s in shutdown {
            let _ = s.send(());
        }
        stop
    }

    fn write(
        &mut self,
        msgs: impl Iterator<Item = WriterMsg>,
        shutdown: &mut Vec<oneshot::Sender<()>>,
        answers: &mut Vec<(Reply, Result<AppendResult, StoreError>)>,
        committed: &mut Vec<RecordedEvent>,
    ) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let mut next_position: Position = self.head.load(Ordering::Acquire) + 1;
        let at = now_ms();
        let mut failure = None;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (position, event_id, stream_id, version, event_type, \
                     schema_version, recorded_at_ms, metadata, payload) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(unavailable)?;
            for msg in msgs {
                let (stream, expected, events, reply) = match msg {
                    WriterMsg::Shutdown(s) => {
                        shutdown.push(s);
                        continue;
                    }
                    WriterMsg::Append {
                        stream,
                        expected,
                        events,
                        reply,
                    } => (stream, expected, events, reply),
                };
                if failure.is_some() {
                    answers.push((reply, Err(StoreError::Unavailable("batch failed".into()))));
                    continue;
                }
                let current = match self.versions.get(&stream) {
                    Some(v) => *v,
                    None => match stream_version(&tx, &stream) {
                        Ok(v) => v,
                        Err(e) => {
                            failure = Some(e);
                            answers.push((reply, Err(StoreError::Unavailable("".into()))));
                            continue;
                        }
                    },
                };
                if !expected.admits(current) {
                    self.versions.insert(stream.clone(), current);
                    answers.push((
                        reply,
                        Err(StoreError::WrongExpectedVersion {
                            stream,
                            expected,
                            actual: current,
                        }),
                    ));
                    continue;
                }
                let first_position = next_position;
                let n = events.len() as u64;
                for (i, e) in events.into_iter().enumerate() {
                    let version = current + 1 + i as u64;
                    let r = insert.execute(params![
                        next_position as i64,
                        e.id.as_bytes().as_slice(),
                        stream.as_str(),
                        version as i64,
                        e.event_type.as_str(),
                        e.schema_version as i64,
                        at,
                        serde_json::to_string(&e.metadata).expect("metadata serializes"),
                        serde_json::to_string(&e.payload).expect("JSON values serialize"),
                    ]);
                    if let Err(err) = r {
                        failure = Some(unavailable(err));
                        break;
                    }
                    committed.push(RecordedEvent {
                        id: e.id,
                        stream_id: stream.clone(),
                        version,
                        position: next_position,
                        event_type: e.event_type,
                        schema_version: e.schema_version,
                        recorded_at_ms: at,
                        metadata: e.metadata,
                        payload: e.payload,
                    });
                    next_position += 1;
                }
                self.versions.insert(stream, current + n);
                answers.push((
                    reply,
                    Ok(AppendResult {
                        first_version: current + 1,
                        last_version: current + n,
                        first_position,
                        last_position: first_position + n - 1,
                    }),
                ));
            }
        }
        if let Some(e) = failure {
            // Dropping `tx` rolls back.
            return Err(e);
        }
        tx.commit().map_err(unavailable)
    }
}

fn msg_events(m: &WriterMsg) -> usize {
    match m {
        WriterMsg::Append { events, .. } => events.len(),
        WriterMsg::Shutdown(_) => 0,
    }
}
