//! Connection counting: the global cap and the per-address cap, both counted
//! on the address every rule uses (the PROXY header's, when there is one).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections per client address.
#[derive(Default)]
pub struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds one connection's place; gives it back when dropped.
pub struct AddressSlot {
    owner: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    /// Takes a place for `ip` unless it already has `limit` connections.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<AddressSlot> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            owner: self.clone(),
            ip,
        })
    }

    pub fn count(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ip.to_canonical()).copied().unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_returned() {
        let p = Arc::new(PerAddress::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = p.try_acquire(ip, 2).unwrap();
        let _b = p
            .try_acquire("::ffff:192.0.2.1".parse().unwrap(), 2)
            .unwrap();
        assert!(p.try_acquire(ip, 2).is_none());
        assert!(p.try_acquire("192.0.2.2".parse().unwrap(), 2).is_some());
        drop(a);
        assert_eq!(p.count(ip), 1);
        assert!(p.try_acquire(ip, 2).is_some());
    }
}
