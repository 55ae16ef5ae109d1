//! Group commit (interim version, replaced by the store branch): one fsync per call.
use super::{SharedStore, StoreError};

#[derive(Clone)]
pub struct Flusher {
    store: SharedStore,
}

impl Flusher {
    pub fn new(store: SharedStore) -> Flusher {
        Flusher { store }
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }
}
