//! How sessions (and notices) tell the queue manager about a message just
//! spooled, so it is delivered now rather than at the next scan.

use tokio::sync::mpsc;

/// Tells the manager about new messages.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<String>,
}

/// The manager's end of a `QueueHandle`: ids of newly spooled messages.
pub struct Arrivals(pub(super) mpsc::UnboundedReceiver<String>);

impl QueueHandle {
    pub fn channel() -> (QueueHandle, Arrivals) {
        let (tx, rx) = mpsc::unbounded_channel();
        (QueueHandle { tx }, Arrivals(rx))
    }

    /// A message was just spooled: deliver it now.
    pub fn submit(&self, id: String) {
        let _ = self.tx.send(id);
    }
}
