//! The queue: what happens to a message after it is spooled. `manager`
//! schedules, `delivery` makes one attempt of one message, `verdict` says
//! what its replies mean per recipient, `pool` holds routes and upstream
//! health, `dsn` writes notices, `listing` shows the queue.

pub mod arrivals;
pub mod delivery;
pub mod dsn;
pub mod listing;
pub mod manager;
pub mod pool;
pub mod verdict;

/// The file `smarthost queue flush` creates in the spool root; the running
/// relay's queue manager polls for it, retries everything, and removes it.
pub const FLUSH_REQUEST: &str = "flush-requested";

pub use crate::spool::DELETED_IDS;
