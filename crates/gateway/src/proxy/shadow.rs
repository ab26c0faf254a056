//! Shadow mode: the legacy answer is served; a copy of the request goes to the new side, and
//! the two answers are compared off the request path. A bounded number of comparisons run at
//! once; past that, shadows are skipped rather than queued, so the shadow can never slow or
//! break the primary answer.

use std::collections::{BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};

use axum::body::Bytes;
use http_body::{Body as HttpBody, Frame};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::diff::{self, Answer};

/// Diff samples kept per route.
pub const SHADOW_SAMPLES: usize = 20;
/// Comparisons running at once over the whole gateway; more are skipped.
pub const MAX_SHADOWS_IN_FLIGHT: usize = 256;

/// Shadow counters of one route.
#[derive(Default)]
pub struct ShadowStats {
    pub compared: AtomicU64,
    pub matched: AtomicU64,
    pub mismatched: AtomicU64,
    /// The shadow (or the twin) failed or timed out.
    pub errors: AtomicU64,
    /// Not shadowed: body over the limit or of unknown length, or too many in flight.
    pub skipped: AtomicU64,
    /// Differences that the legacy twin showed too, and so were not counted.
    pub noise_suppressed: AtomicU64,
    samples: Mutex<VecDeque<Value>>,
    /// Comparisons (`requests`) and mismatches (`errors`) of the last few seconds, for a
    /// rollout's mismatch bound.
    pub window: super::rollout::WindowCell,
}

impl ShadowStats {
    pub fn record(&self, path: &str, diffs: &BTreeSet<String>, noise: &BTreeSet<String>) {
        self.compared.fetch_add(1, Ordering::Relaxed);
        let real: Vec<&String> = diffs.difference(noise).collect();
        self.window.record(None, !real.is_empty());
        if diffs.len() > real.len() {
            self.noise_suppressed.fetch_add(1, Ordering::Relaxed);
        }
        if real.is_empty() {
            self.matched.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.mismatched.fetch_add(1, Ordering::Relaxed);
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() == SHADOW_SAMPLES {
            s.pop_front();
        }
        s.push_back(json!({
            "path": path,
            "differences": real,
            "at": ficus_core::time::format_rfc3339_ms(ficus_store::now_ms()),
        }));
    }

    pub fn json(&self) -> Value {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "compared": load(&self.compared),
            "matched": load(&self.matched),
            "mismatched": load(&self.mismatched),
            "errors": load(&self.errors),
            "skipped": load(&self.skipped),
            "noise_suppressed": load(&self.noise_suppressed),
            "samples": self.samples.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect::<Vec<_>>(),
        })
    }
}

/// A response body that passes every frame through untouched and keeps a copy (up to a
/// limit) for the comparison, handed over when the body ends. A client that stops reading,
/// or a body over the limit, hands over `None`.
pub struct Tee<B> {
    inner: B,
    copy: Vec<u8>,
    limit: usize,
    overflow: bool,
    done: Option<oneshot::Sender<Option<Vec<u8>>>>,
}

impl<B> Tee<B> {
    pub fn new(inner: B, limit: usize, done: oneshot::Sender<Option<Vec<u8>>>) -> Self
    where
        B: HttpBody,
    {
        let mut tee = Self {
            inner,
            copy: Vec::new(),
            limit,
            overflow: false,
            done: Some(done),
        };
        // An empty body may never be polled at all.
        if tee.inner.is_end_stream() {
            tee.finish();
        }
        tee
    }
}

impl<B> Tee<B> {
    /// Hands the copy over (once).
    fn finish(&mut self) {
        if let Some(tx) = self.done.take() {
            let copy = (!self.overflow).then(|| std::mem::take(&mut self.copy));
            let _ = tx.send(copy);
        }
    }
}

impl<B> Drop for Tee<B> {
    fn drop(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(None);
        }
    }
}

impl<B> HttpBody for Tee<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if this.copy.len() + data.len() <= this.limit {
                        this.copy.extend_from_slice(data);
                    } else {
                        this.overflow = true;
                    }
                }
                // A body of known length is not polled past its last byte: finish here.
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Differences between the primary and the shadow that the twin does not explain.
pub fn compare(
    primary: &Answer,
    shadow: &Answer,
    twin: Option<&Answer>,
    ignore: &[String],
) -> (BTreeSet<String>, BTreeSet<String>) {
    let diffs = diff::differences(primary, shadow, ignore);
    let noise = twin.map_or_else(BTreeSet::new, |t| diff::differences(primary, t, ignore));
    (diffs, noise)
}
