//! The pod's current policy, shared by every listener: replaced whole when a new one
//! arrives, kept when the controller goes away (fail static).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// One policy as the controller sent it, with its version.
pub type Snapshot = palisade_policy::compiled::Versioned;

/// The current policy, or none yet.
pub type Current = Option<Arc<Snapshot>>;

/// Where the current policy lives.
#[derive(Clone)]
pub struct PolicyState {
    tx: Arc<watch::Sender<Current>>,
}

impl Default for PolicyState {
    fn default() -> Self {
        Self {
            tx: Arc::new(watch::channel(None).0),
        }
    }
}

impl PolicyState {
    /// Replaces the policy; every open connection re-judges itself against it.
    pub fn set(&self, snapshot: Snapshot) {
        self.tx.send_replace(Some(Arc::new(snapshot)));
    }

    /// The current policy, if one arrived.
    pub fn current(&self) -> Current {
        self.tx.borrow().clone()
    }

    /// A receiver that wakes on every new policy.
    pub fn subscribe(&self) -> watch::Receiver<Current> {
        self.tx.subscribe()
    }

    /// The current policy, waiting up to `hold` for the first one to arrive.
    pub async fn wait(&self, hold: Duration) -> Current {
        if let Some(s) = self.current() {
            return Some(s);
        }
        let mut rx = self.subscribe();
        tokio::time::timeout(hold, rx.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|s| s.clone())
    }
}
