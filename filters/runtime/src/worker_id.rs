//! A proxy-wide unique id for each worker VM (root context ids repeat from worker to worker).
//!
//! The id is a counter in shared data, incremented by CAS, in the high 32 bits, and 32 random bits in
//! the low ones. The counter alone is not enough: while its key is absent there is no CAS token to
//! check (an absent-key write is not a CAS, see [`crate::shared_data`]), so two VMs starting together
//! can both write 1; the random bits still tell them apart. The counter is never 0, so no id is 0.

use crate::shared_data::{SetError, SharedData};

/// CAS attempts before falling back to random bits only.
const ATTEMPTS: usize = 64;

/// Allocates an id: increments the decimal counter under `key`, returns `(counter << 32) | random`.
/// Under contention that never ends, or without shared data, the high bits are random too.
pub fn allocate(shared: &mut dyn SharedData, key: &str, random: u64) -> u64 {
    let low = random & 0xffff_ffff;
    for _ in 0..ATTEMPTS {
        let (n, cas) = match shared.get(key) {
            Some((v, cas)) => {
                (std::str::from_utf8(&v).ok().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0), Some(cas))
            }
            None => (0, None),
        };
        let next = n.wrapping_add(1).max(1);
        match shared.set(key, next.to_string().as_bytes(), cas) {
            Ok(()) => return (u64::from(next) << 32) | low,
            Err(SetError::CasMismatch) => continue,
            Err(SetError::Other) => break,
        }
    }
    ((random >> 32).max(1) << 32) | low
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_data::MemoryShared;

    #[test]
    fn ids_count_up_and_keep_the_random_bits() {
        let mut s = MemoryShared::default();
        let a = allocate(&mut s, "ids", 0xdead_beef);
        let b = allocate(&mut s, "ids", 0xdead_beef);
        assert_eq!((a >> 32, a & 0xffff_ffff), (1, 0xdead_beef));
        assert_eq!(b >> 32, 2);
        assert_ne!(a, b);
    }

    #[test]
    fn two_vms_creating_the_counter_together_still_differ() {
        // Both read "absent" and both write 1 (creation is not CAS-protected): the random bits differ.
        let mut s = MemoryShared::default();
        let a = allocate(&mut s, "ids", 1);
        s.remove("ids");
        let b = allocate(&mut s, "ids", 2);
        assert_eq!(a >> 32, b >> 32);
        assert_ne!(a, b);
    }

    #[test]
    fn a_racing_increment_is_retried() {
        let mut s = MemoryShared::default();
        s.put("ids", b"4");
        s.race_next_write(b"5");
        assert_eq!(allocate(&mut s, "ids", 0) >> 32, 6);
    }

    #[test]
    fn without_shared_data_ids_are_random_and_never_zero() {
        let mut s = MemoryShared::default();
        s.refuse_writes_under(Some(String::new()));
        assert_eq!(allocate(&mut s, "ids", 0x1234_5678_9abc_def0), 0x1234_5678_9abc_def0);
        assert_ne!(allocate(&mut s, "ids", 0), 0);
    }
}
