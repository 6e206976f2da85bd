//! What follows a journal write, and waiting for it. A hold is `busy` while its change is
//! in the journal's queue; a concurrent copy of the same call waits here for it to go idle
//! and then answers from the durable outcome (G4, G6). What follows the write (clearing
//! `busy`, undoing a failed write) must run even when the caller is gone (a cancelled
//! request, a deadline): else the hold would stay busy and every retry would wait for ever.

use std::sync::Arc;

use super::{Engine, EngineError};
use crate::journal::{Durable, JournalError};

/// The journal's answer for one write.
type Written = Result<(), JournalError>;

/// A write's follow-up (see `Engine::when_durable`); run on a task of its own if dropped
/// before it ran.
struct Finisher<'a, F>
where
    F: FnOnce(&Engine, Written) -> Result<(), EngineError> + Send + 'static,
{
    /// Upgraded only if the follow-up must run on its own task.
    engine: &'a std::sync::Weak<Engine>,
    done: Durable,
    finish: Option<F>,
}

impl<F> Drop for Finisher<'_, F>
where
    F: FnOnce(&Engine, Written) -> Result<(), EngineError> + Send + 'static,
{
    fn drop(&mut self) {
        let Some(finish) = self.finish.take() else {
            return;
        };
        let done = std::mem::replace(&mut self.done, tokio::sync::oneshot::channel().1);
        let engine = self.engine.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("a cancelled call's journal write cannot be followed up: no runtime");
            return;
        };
        rt.spawn(async move {
            let written = done.await.unwrap_or(Err(JournalError::Closed));
            if let Some(engine) = engine.upgrade()
                && let Err(e) = finish(&engine, written)
            {
                tracing::warn!(error = %e, "the journal write of a cancelled call failed; undone");
            }
        });
    }
}

impl Engine {
    /// Waits until no transition of the reservation is being journaled; at once if none
    /// is, or if the reservation is gone.
    pub(super) async fn wait_idle(&self, reservation_id: &str) {
        let waiters: Arc<tokio::sync::Notify>;
        let woken;
        {
            let Some(mut h) = self.holds.get_mut(reservation_id) else {
                return;
            };
            if !h.busy {
                return;
            }
            waiters = h.waiters.get_or_insert_with(Default::default).clone();
            // Made under the hold's lock: `Hold::idle` cannot wake the waiters before
            // this one counts among them.
            woken = waiters.notified();
        }
        woken.await;
    }

    /// Runs `finish` with the journal's answer for `done`. If the caller stops waiting
    /// first (its request was cancelled or timed out), `finish` still runs, on a task of
    /// its own: a hold must not stay busy, nor a failed write stay applied.
    pub(super) async fn when_durable<F>(&self, done: Durable, finish: F) -> Result<(), EngineError>
    where
        F: FnOnce(&Engine, Written) -> Result<(), EngineError> + Send + 'static,
    {
        let mut f = Finisher {
            engine: &self.me,
            done,
            finish: Some(finish),
        };
        let written = (&mut f.done).await.unwrap_or(Err(JournalError::Closed));
        let Some(finish) = f.finish.take() else {
            unreachable!("only Finisher::drop takes `finish`, and it has not run");
        };
        finish(self, written)
    }
}
