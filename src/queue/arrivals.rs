//! How sessions (and notices) tell the queue manager about a message just
//! spooled, so it is delivered now rather than at the next scan, from memory
//! when the session still has it whole.

use tokio::sync::mpsc;

use crate::spool::Envelope;

/// A message just made durable, still in memory: the envelope as stored and
/// the content, so its first delivery need not read it back from the spool.
pub struct Hot {
    pub envelope: Envelope,
    pub content: Vec<u8>,
}

/// One newly spooled message.
pub struct Arrival {
    pub id: String,
    pub hot: Option<Hot>,
}

/// Tells the manager about new messages.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<Arrival>,
}

/// The manager's end of a `QueueHandle`.
pub struct Arrivals(pub(super) mpsc::UnboundedReceiver<Arrival>);

impl QueueHandle {
    pub fn channel() -> (QueueHandle, Arrivals) {
        let (tx, rx) = mpsc::unbounded_channel();
        (QueueHandle { tx }, Arrivals(rx))
    }

    /// A message was just spooled: deliver it now (from `hot` if given).
    pub fn submit(&self, id: String, hot: Option<Hot>) {
        let _ = self.tx.send(Arrival { id, hot });
    }
}
