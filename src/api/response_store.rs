//! The Responses API's store: responses kept in memory for `GET /v1/responses/{id}` and for
//! `previous_response_id`, with the conversation each one ends. Bounded three ways (count,
//! bytes of text, age; `[responses]` in the config), least recently used first out; lost
//! on restart. One short lock per call; nothing is held across I/O.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indexmap::IndexMap;

use crate::config::ResponsesSettings;
use crate::openai::responses::ResponseObject;
use crate::validation::responses::Conversation;

/// A stored response and the conversation it ends (its own output included).
#[derive(Debug, Clone)]
pub struct Stored {
    /// The response as returned.
    pub response: ResponseObject,
    /// The turns so far, for `previous_response_id`.
    pub conversation: Conversation,
}

struct Entry {
    stored: Stored,
    bytes: usize,
    made: Instant,
}

struct Inner {
    /// Oldest use first.
    entries: IndexMap<String, Entry>,
    bytes: usize,
}

/// The store.
pub struct ResponseStore {
    inner: Mutex<Inner>,
    max_entries: usize,
    max_bytes: usize,
    max_age: Duration,
}

fn size_of(stored: &Stored) -> usize {
    let turns: usize = stored
        .conversation
        .turns
        .iter()
        .map(|t| t.content.len())
        .sum();
    turns + serde_json::to_string(&stored.response).map_or(0, |s| s.len())
}

impl ResponseStore {
    /// An empty store with these bounds.
    pub fn new(settings: &ResponsesSettings) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: IndexMap::new(),
                bytes: 0,
            }),
            max_entries: settings.store_max_entries,
            max_bytes: settings.store_max_bytes,
            max_age: Duration::from_secs(settings.store_max_age_secs),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `stored` under its response's id, evicting the least recently used beyond the
    /// bounds (a response larger than the whole byte budget is not kept).
    pub fn put(&self, stored: Stored) {
        let bytes = size_of(&stored);
        if bytes > self.max_bytes || self.max_entries == 0 {
            return;
        }
        let mut inner = self.lock();
        let id = stored.response.id.clone();
        if let Some(old) = inner.entries.shift_remove(&id) {
            inner.bytes -= old.bytes;
        }
        inner.bytes += bytes;
        inner.entries.insert(
            id,
            Entry {
                stored,
                bytes,
                made: Instant::now(),
            },
        );
        while inner.entries.len() > self.max_entries || inner.bytes > self.max_bytes {
            match inner.entries.shift_remove_index(0) {
                Some((_, old)) => inner.bytes -= old.bytes,
                None => break,
            }
        }
    }

    /// The stored response `id`, if it is there and not expired (and marks it used).
    pub fn get(&self, id: &str) -> Option<Stored> {
        let mut inner = self.lock();
        let index = inner.entries.get_index_of(id)?;
        if inner.entries[index].made.elapsed() > self.max_age {
            if let Some((_, old)) = inner.entries.shift_remove_index(index) {
                inner.bytes -= old.bytes;
            }
            return None;
        }
        let last = inner.entries.len() - 1;
        inner.entries.move_index(index, last);
        inner.entries.get_index(last).map(|(_, e)| e.stored.clone())
    }

    /// Removes `id`; whether it was there.
    pub fn delete(&self, id: &str) -> bool {
        let mut inner = self.lock();
        match inner.entries.shift_remove(id) {
            Some(old) => {
                inner.bytes -= old.bytes;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: &str, text: &str) -> Stored {
        let mut response: ResponseObject = serde_json::from_value(serde_json::json!({
            "id": id, "object": "response", "created_at": 1, "status": "completed", "error": null,
            "incomplete_details": null, "instructions": null, "max_output_tokens": null, "model": "m",
            "output": [], "parallel_tool_calls": true, "previous_response_id": null,
            "reasoning": {}, "store": true, "temperature": 1.0, "text": {}, "tool_choice": "auto",
            "tools": [], "top_p": 1.0, "truncation": "disabled", "usage": null, "user": null, "metadata": {}
        }))
        .unwrap();
        response.id = id.into();
        Stored {
            response,
            conversation: Conversation {
                turns: vec![crate::engine::ChatTurn::new(
                    crate::engine::Role::User,
                    text.into(),
                )],
                calls: Default::default(),
            },
        }
    }

    fn store(entries: usize, bytes: usize, age: u64) -> ResponseStore {
        ResponseStore::new(&ResponsesSettings {
            store_max_entries: entries,
            store_max_bytes: bytes,
            store_max_age_secs: age,
        })
    }

    #[test]
    fn least_recently_used_goes_first() {
        let s = store(2, 1 << 20, 60);
        s.put(stored("a", "x"));
        s.put(stored("b", "x"));
        assert!(s.get("a").is_some()); // a is now the most recent
        s.put(stored("c", "x"));
        assert!(s.get("b").is_none());
        assert!(s.get("a").is_some() && s.get("c").is_some());
        assert!(s.delete("a") && !s.delete("a"));
    }

    #[test]
    fn bytes_and_age_are_bounded() {
        let s = store(100, 1500, 60);
        s.put(stored("big", &"x".repeat(5000)));
        assert!(s.get("big").is_none(), "larger than the budget");
        s.put(stored("a", &"x".repeat(600)));
        s.put(stored("b", &"x".repeat(600)));
        assert!(s.get("a").is_none() && s.get("b").is_some());
        let expired = store(10, 1 << 20, 0);
        expired.put(stored("a", "x"));
        std::thread::sleep(Duration::from_millis(1100));
        assert!(expired.get("a").is_none());
    }
}
