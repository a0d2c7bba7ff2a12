//! Per-instance cache of the member table, refreshed on NOTIFY and on misses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{RwLock, broadcast};

use crate::store::{self, MemberRow, StoreError};

#[derive(Default)]
struct Inner {
    by_name: HashMap<String, Arc<MemberRow>>,
    loaded_at: Option<Instant>,
}

pub struct Members {
    inner: RwLock<Inner>,
    pool: deadpool_postgres::Pool,
    /// Members that were disabled; live subscriptions of theirs end at once.
    pub revoked: broadcast::Sender<String>,
}

/// Misses reload the table at most this often, so a flood of unknown ids
/// cannot turn into a flood of queries.
const MISS_RELOAD_INTERVAL: Duration = Duration::from_millis(100);

impl Members {
    pub fn new(pool: deadpool_postgres::Pool) -> Arc<Self> {
        let (revoked, _) = broadcast::channel(256);
        Arc::new(Self {
            inner: RwLock::new(Inner::default()),
            pool,
            revoked,
        })
    }

    pub async fn reload(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let rows = store::load_members(&**client).await?;
        let mut inner = self.inner.write().await;
        let previously_enabled: Vec<String> = inner
            .by_name
            .values()
            .filter(|m| m.enabled)
            .map(|m| m.member.clone())
            .collect();
        inner.by_name.clear();
        for row in rows {
            let row = Arc::new(row);
            inner.by_name.insert(row.member.clone(), row);
        }
        inner.loaded_at = Some(Instant::now());
        for name in previously_enabled {
            if inner.by_name.get(&name).is_none_or(|m| !m.enabled) {
                let _ = self.revoked.send(name);
            }
        }
        Ok(())
    }

    /// Returns the member, reloading once on a miss.
    pub async fn get(&self, member: &str) -> Result<Option<Arc<MemberRow>>, StoreError> {
        {
            let inner = self.inner.read().await;
            if let Some(m) = inner.by_name.get(member) {
                return Ok(Some(m.clone()));
            }
            if inner
                .loaded_at
                .is_some_and(|t| t.elapsed() < MISS_RELOAD_INTERVAL)
            {
                // Reloaded very recently: ask the database for this one member only,
                // so a member registered through another instance a moment ago is
                // found at once, while a flood of unknown ids costs one indexed
                // lookup each rather than full reloads.
                drop(inner);
                let client = self.pool.get().await?;
                let row = store::load_member(&**client, member).await?.map(Arc::new);
                if let Some(row) = &row {
                    let mut inner = self.inner.write().await;
                    inner.by_name.insert(row.member.clone(), row.clone());
                }
                return Ok(row);
            }
        }
        self.reload().await?;
        Ok(self.inner.read().await.by_name.get(member).cloned())
    }
}
