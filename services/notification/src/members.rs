//! Member lists of channels, cached by membership version.
//!
//! Messaging bumps a channel's `members_version` on every join and leave, stamps each
//! MessageCreated with the version it was committed under and answers ListMembers with the
//! version read in the same snapshot as the members. Within one channel, equal versions
//! therefore mean equal member lists: an entry is used only for an event carrying exactly
//! the cached version, so the cache may be out of date (then it is not used) but never
//! wrong. Version 0 means "unknown" and never matches.
//!
//! One entry per channel, at most `capacity` channels. When full, the victim is chosen by
//! CLOCK (second chance): every entry has a `used` bit, set when the entry is inserted or
//! hit; the hand sweeps the slots clearing set bits and evicts the first entry whose bit
//! was already clear, i.e. one not used since the hand last passed. That approximates
//! least-recently-used with O(1) amortised work and no linked list.

use std::{collections::HashMap, sync::Arc};

use uuid::Uuid;

/// A channel's member ids at one membership version.
pub type Members = Arc<[String]>;

/// See the module documentation.
#[derive(Debug)]
pub struct MemberCache {
    capacity: usize,
    index: HashMap<Uuid, usize>,
    slots: Vec<Slot>,
    hand: usize,
}

#[derive(Debug)]
struct Slot {
    channel: Uuid,
    version: i64,
    members: Members,
    used: bool,
}

impl MemberCache {
    /// A cache of at most `capacity` channels; 0 caches nothing.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            index: HashMap::new(),
            slots: Vec::new(),
            hand: 0,
        }
    }

    /// Channels held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// The members of `channel` at membership `version`, if that exact version is held.
    pub fn get(&mut self, channel: Uuid, version: i64) -> Option<Members> {
        if version == 0 {
            return None;
        }
        let slot = &mut self.slots[*self.index.get(&channel)?];
        if slot.version != version {
            return None;
        }
        slot.used = true;
        Some(slot.members.clone())
    }

    /// Holds `members` as the list of `channel` at `version`. A held newer version of the
    /// channel is kept (versions only grow, and upcoming events carry the newest one).
    pub fn put(&mut self, channel: Uuid, version: i64, members: Members) {
        if self.capacity == 0 || version == 0 {
            return;
        }
        if let Some(&i) = self.index.get(&channel) {
            let slot = &mut self.slots[i];
            if version >= slot.version {
                slot.version = version;
                slot.members = members;
                slot.used = true;
            }
            return;
        }
        let slot = Slot {
            channel,
            version,
            members,
            used: true,
        };
        if self.slots.len() < self.capacity {
            self.index.insert(channel, self.slots.len());
            self.slots.push(slot);
            return;
        }
        // Full: at most one full turn clears every bit, so this ends within two turns.
        while self.slots[self.hand].used {
            self.slots[self.hand].used = false;
            self.hand = (self.hand + 1) % self.slots.len();
        }
        let victim = std::mem::replace(&mut self.slots[self.hand], slot);
        self.index.remove(&victim.channel);
        self.index.insert(channel, self.hand);
        self.hand = (self.hand + 1) % self.slots.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(ids: &[&str]) -> Members {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    fn channel(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn only_the_exact_version_is_served() {
        let mut c = MemberCache::new(10);
        c.put(channel(1), 3, list(&["alice", "bob"]));
        assert_eq!(
            c.get(channel(1), 3).as_deref(),
            Some(&list(&["alice", "bob"])[..])
        );
        assert!(c.get(channel(1), 2).is_none(), "older version");
        assert!(c.get(channel(1), 4).is_none(), "newer version");
        assert!(c.get(channel(2), 3).is_none(), "another channel");
        assert!(c.get(channel(1), 0).is_none(), "0 is unknown");
        c.put(channel(1), 4, list(&["alice"]));
        assert_eq!(c.get(channel(1), 4).as_deref(), Some(&list(&["alice"])[..]));
        assert!(c.get(channel(1), 3).is_none(), "one version per channel");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn an_older_version_does_not_replace_a_newer_one() {
        let mut c = MemberCache::new(10);
        c.put(channel(1), 5, list(&["a"]));
        c.put(channel(1), 4, list(&["a", "b"]));
        assert!(c.get(channel(1), 5).is_some());
        assert!(c.get(channel(1), 4).is_none());
    }

    #[test]
    fn unknown_versions_and_capacity_zero_hold_nothing() {
        let mut c = MemberCache::new(10);
        c.put(channel(1), 0, list(&["a"]));
        assert_eq!(c.len(), 0);
        let mut off = MemberCache::new(0);
        off.put(channel(1), 1, list(&["a"]));
        assert_eq!(off.len(), 0);
        assert!(off.get(channel(1), 1).is_none());
    }

    #[test]
    fn full_cache_evicts_an_entry_not_used_since_the_last_sweep() {
        let mut c = MemberCache::new(3);
        for n in 1..=3 {
            c.put(channel(n), 1, list(&["a"]));
        }
        // The first eviction sweeps every bit clear and takes slot 0 (channel 1).
        c.put(channel(4), 1, list(&["a"]));
        assert_eq!(c.len(), 3);
        assert!(c.get(channel(1), 1).is_none());
        // Channel 2 is used again, channel 3 is not: 3 goes next, 2 stays.
        assert!(c.get(channel(2), 1).is_some());
        c.put(channel(5), 1, list(&["a"]));
        assert!(c.get(channel(3), 1).is_none());
        for n in [2, 4, 5] {
            assert!(c.get(channel(n), 1).is_some(), "channel {n} kept");
        }
        assert_eq!(c.len(), 3);
    }

    proptest::proptest! {
        /// Whatever the sequence of puts and gets, the cache never exceeds its capacity,
        /// its index agrees with its slots, and a get returns exactly what was last put
        /// for that (channel, version).
        #[test]
        fn bounded_and_exact(ops in proptest::collection::vec((0u8..2, 0u128..12, 0i64..4), 0..200), cap in 0usize..5) {
            let mut c = MemberCache::new(cap);
            let mut last: HashMap<(Uuid, i64), Members> = HashMap::new();
            for (op, ch, v) in ops {
                let ch = channel(ch);
                if op == 0 {
                    let members = list(&[&format!("u{v}"), "x"]);
                    c.put(ch, v, members.clone());
                    last.insert((ch, v), members);
                } else if let Some(got) = c.get(ch, v) {
                    proptest::prop_assert_eq!(Some(&got), last.get(&(ch, v)));
                }
                proptest::prop_assert!(c.len() <= cap);
                proptest::prop_assert_eq!(c.index.len(), c.slots.len());
                for (ch, &i) in &c.index {
                    proptest::prop_assert_eq!(c.slots[i].channel, *ch);
                }
            }
        }
    }
}
