//! Idempotency keys in memory: the same rules as the durable adapters, with the key map locked
//! around the append so "events and completed record" is one step.

use async_trait::async_trait;
use ficus_core::{ExpectedVersion, NewEvent, StreamId};

use super::{MemEventStore, MEM_MAX_APPEND_EVENTS};
use crate::idempotency::{
    judge, new_token, Claim, ClaimRequest, IdempotencyRecord, IdempotencyStore, Judgement,
    Responder, StoredResponse, Ticket, MAX_PURGE_BATCH,
};
use crate::port::validate_batch;
use crate::{AppendResult, StoreError};

type Keys = std::collections::HashMap<(String, String), IdempotencyRecord>;

impl MemEventStore {
    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        // Every change to the map is one insert or field update: a poisoned map is consistent.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The in-progress record `ticket` holds, if it still holds it.
fn held<'a>(keys: &'a mut Keys, ticket: &Ticket) -> Option<&'a mut IdempotencyRecord> {
    keys.get_mut(&(ticket.scope.clone(), ticket.key.clone()))
        .filter(|r| r.token == ticket.token && r.response.is_none())
}

#[async_trait]
impl IdempotencyStore for MemEventStore {
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        let mut keys = self.keys();
        let id = (req.scope.to_owned(), req.key.to_owned());
        let token = new_token();
        let owned = |created_at_ms| {
            Claim::Owned(Ticket {
                scope: req.scope.to_owned(),
                key: req.key.to_owned(),
                token,
                created_at_ms,
            })
        };
        match keys.get_mut(&id).map(|r| (judge(r, req), r)) {
            None | Some((Judgement::Fresh, _)) => {
                keys.insert(
                    id,
                    IdempotencyRecord {
                        fingerprint: req.fingerprint.to_owned(),
                        token,
                        created_at_ms: req.now_ms,
                        locked_until_ms: req.now_ms + req.lease_ms,
                        response: None,
                    },
                );
                Ok(owned(req.now_ms))
            }
            Some((Judgement::TakeOver { created_at_ms }, r)) => {
                r.token = token;
                r.locked_until_ms = req.now_ms + req.lease_ms;
                Ok(owned(created_at_ms))
            }
            Some((Judgement::Decided(claim), _)) => Ok(claim),
        }
    }

    async fn append_completing(
        &self,
        ticket: &Ticket,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        respond: Responder,
    ) -> Result<AppendResult, StoreError> {
        validate_batch(&events, MEM_MAX_APPEND_EVENTS)?;
        let mut keys = self.keys();
        let record = held(&mut keys, ticket).ok_or(StoreError::ClaimLost)?;
        let result = self.append_locked(&mut self.lock(), stream, expected, events)?;
        record.response = Some(respond(&result));
        record.locked_until_ms = 0;
        Ok(result)
    }

    async fn complete(
        &self,
        ticket: &Ticket,
        response: &StoredResponse,
    ) -> Result<bool, StoreError> {
        let mut keys = self.keys();
        Ok(match held(&mut keys, ticket) {
            Some(r) => {
                r.response = Some(response.clone());
                r.locked_until_ms = 0;
                true
            }
            None => false,
        })
    }

    async fn release(&self, ticket: &Ticket) -> Result<(), StoreError> {
        let mut keys = self.keys();
        if held(&mut keys, ticket).is_some() {
            keys.remove(&(ticket.scope.clone(), ticket.key.clone()));
        }
        Ok(())
    }

    async fn purge(&self, created_before_ms: i64, limit: usize) -> Result<usize, StoreError> {
        let mut keys = self.keys();
        let mut old: Vec<(i64, (String, String))> = keys
            .iter()
            .filter(|(_, r)| r.created_at_ms < created_before_ms)
            .map(|(k, r)| (r.created_at_ms, k.clone()))
            .collect();
        old.sort();
        old.truncate(limit.min(MAX_PURGE_BATCH));
        for (_, k) in &old {
            keys.remove(k);
        }
        Ok(old.len())
    }

    async fn get(&self, scope: &str, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        Ok(self
            .keys()
            .get(&(scope.to_owned(), key.to_owned()))
            .cloned())
    }
}
