//! Delivery verification: given what the server acknowledged and what every receiver got,
//! proves (or refutes) no loss, no duplicate and in-order, gapless delivery per channel.
//!
//! The gateway promises each connection a channel's messages in strictly increasing `seq`
//! without gaps, starting after the channel's `last_seq` at connect time. Every run starts
//! on fresh channels (`last_seq` 0), so each receiver must see exactly `1..=top` in order,
//! where `top` is the highest seq anyone saw (acked or delivered): a message committed but
//! whose ack was lost still has to be delivered.

use std::collections::{BTreeMap, HashMap, HashSet};

/// Channel index within a run.
pub type Channel = u32;

/// One delivered `message` frame, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub channel: Channel,
    pub seq: u64,
    pub client_msg_id: String,
}

/// What one connection received.
#[derive(Debug, Clone, Default)]
pub struct ReceiverLog {
    /// Channels the connection's user was a member of when it connected.
    pub channels: Vec<Channel>,
    pub deliveries: Vec<Delivery>,
}

/// Verdict of a run; `ok()` when nothing was lost, duplicated, reordered or corrupted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verification {
    pub receivers: usize,
    pub channels: usize,
    /// (receiver, channel) pairs checked.
    pub streams: usize,
    pub delivered: u64,
    /// Seqs in `1..=top` a receiver never got.
    pub missing: u64,
    /// A seq delivered more than once to one receiver.
    pub duplicates: u64,
    /// A seq delivered after a higher one.
    pub out_of_order: u64,
    /// A delivered (channel, seq) whose client_msg_id differs from the acked one.
    pub mismatched: u64,
    /// A delivery for a channel the receiver is not a member of.
    pub unexpected: u64,
    /// Seqs delivered although their send was never acknowledged (ack lost or errored).
    pub delivered_unacked: u64,
    /// First few problems, human readable.
    pub examples: Vec<String>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.missing == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.mismatched == 0
            && self.unexpected == 0
    }

    fn note(&mut self, s: String) {
        if self.examples.len() < 10 {
            self.examples.push(s);
        }
    }
}

/// Checks every receiver against the acknowledged sends (`acked[channel][seq] = client_msg_id`).
pub fn verify(
    acked: &HashMap<Channel, BTreeMap<u64, String>>,
    receivers: &[ReceiverLog],
) -> Verification {
    let mut v = Verification {
        receivers: receivers.len(),
        ..Verification::default()
    };
    // top seq per channel over acks and all deliveries
    let mut top: HashMap<Channel, u64> = HashMap::new();
    for (c, seqs) in acked {
        if let Some((&s, _)) = seqs.last_key_value() {
            let t = top.entry(*c).or_default();
            *t = (*t).max(s);
        }
    }
    for r in receivers {
        for d in &r.deliveries {
            let t = top.entry(d.channel).or_default();
            *t = (*t).max(d.seq);
        }
    }
    v.channels = top.len();
    let mut unacked: HashSet<(Channel, u64)> = HashSet::new();

    for (ri, r) in receivers.iter().enumerate() {
        let member: HashSet<Channel> = r.channels.iter().copied().collect();
        let mut per_channel: HashMap<Channel, Vec<&Delivery>> = HashMap::new();
        for d in &r.deliveries {
            if member.contains(&d.channel) {
                per_channel.entry(d.channel).or_default().push(d);
            } else {
                v.unexpected += 1;
                v.note(format!(
                    "receiver {ri}: got seq {} of channel {} it is not a member of",
                    d.seq, d.channel
                ));
            }
        }
        for &c in &r.channels {
            v.streams += 1;
            let got = per_channel.remove(&c).unwrap_or_default();
            let mut seen: HashSet<u64> = HashSet::with_capacity(got.len());
            let mut last = 0u64;
            for d in got {
                v.delivered += 1;
                if !seen.insert(d.seq) {
                    v.duplicates += 1;
                    v.note(format!("receiver {ri}: channel {c} seq {} twice", d.seq));
                    continue;
                }
                if d.seq < last {
                    v.out_of_order += 1;
                    v.note(format!(
                        "receiver {ri}: channel {c} seq {} after seq {last}",
                        d.seq
                    ));
                } else {
                    last = d.seq;
                }
                match acked.get(&c).and_then(|m| m.get(&d.seq)) {
                    Some(cid) if *cid != d.client_msg_id => {
                        v.mismatched += 1;
                        v.note(format!(
                            "receiver {ri}: channel {c} seq {} is {:?}, acked as {cid:?}",
                            d.seq, d.client_msg_id
                        ));
                    }
                    Some(_) => {}
                    None => {
                        unacked.insert((c, d.seq));
                    }
                }
            }
            let t = top.get(&c).copied().unwrap_or(0);
            let missing = (1..=t).filter(|s| !seen.contains(s)).count() as u64;
            if missing > 0 {
                let first = (1..=t).find(|s| !seen.contains(s)).unwrap_or(0);
                v.missing += missing;
                v.note(format!(
                    "receiver {ri}: channel {c} missed {missing} of 1..={t} (first: seq {first})"
                ));
            }
        }
    }
    v.delivered_unacked = unacked.len() as u64;
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(c: Channel, s: u64) -> String {
        format!("m-{c}-{s}")
    }

    fn acked(channels: &[(Channel, u64)]) -> HashMap<Channel, BTreeMap<u64, String>> {
        channels
            .iter()
            .map(|&(c, n)| (c, (1..=n).map(|s| (s, cid(c, s))).collect()))
            .collect()
    }

    fn receiver(channels: &[Channel], seqs: &[(Channel, u64)]) -> ReceiverLog {
        ReceiverLog {
            channels: channels.to_vec(),
            deliveries: seqs
                .iter()
                .map(|&(channel, seq)| Delivery {
                    channel,
                    seq,
                    client_msg_id: cid(channel, seq),
                })
                .collect(),
        }
    }

    /// Channel 0 has 3 messages, channel 1 has 2; deliveries interleave across channels.
    fn perfect() -> Vec<ReceiverLog> {
        vec![
            receiver(&[0, 1], &[(0, 1), (1, 1), (0, 2), (1, 2), (0, 3)]),
            receiver(&[0], &[(0, 1), (0, 2), (0, 3)]),
        ]
    }

    #[test]
    fn complete_in_order_delivery_passes() {
        let v = verify(&acked(&[(0, 3), (1, 2)]), &perfect());
        assert!(v.ok(), "{v:?}");
        assert_eq!((v.streams, v.delivered, v.channels), (3, 8, 2));
    }

    #[test]
    fn a_receiver_that_misses_a_message_fails() {
        let mut rs = perfect();
        rs[1] = receiver(&[0], &[(0, 1), (0, 3)]);
        let v = verify(&acked(&[(0, 3), (1, 2)]), &rs);
        assert!(!v.ok());
        assert_eq!(v.missing, 1);
        assert!(v.examples[0].contains("first: seq 2"), "{:?}", v.examples);
    }

    #[test]
    fn missing_the_last_message_fails() {
        let mut rs = perfect();
        rs[1] = receiver(&[0], &[(0, 1), (0, 2)]);
        let v = verify(&acked(&[(0, 3), (1, 2)]), &rs);
        assert_eq!(v.missing, 1);
        assert!(!v.ok());
    }

    #[test]
    fn a_receiver_that_got_nothing_fails() {
        let mut rs = perfect();
        rs[1] = receiver(&[0], &[]);
        let v = verify(&acked(&[(0, 3), (1, 2)]), &rs);
        assert_eq!(v.missing, 3);
    }

    #[test]
    fn a_duplicate_fails() {
        let mut rs = perfect();
        rs[1] = receiver(&[0], &[(0, 1), (0, 2), (0, 2), (0, 3)]);
        let v = verify(&acked(&[(0, 3), (1, 2)]), &rs);
        assert_eq!((v.duplicates, v.missing, v.out_of_order), (1, 0, 0));
        assert!(!v.ok());
    }

    #[test]
    fn a_reordering_fails() {
        let mut rs = perfect();
        rs[1] = receiver(&[0], &[(0, 2), (0, 1), (0, 3)]);
        let v = verify(&acked(&[(0, 3), (1, 2)]), &rs);
        assert_eq!((v.out_of_order, v.missing, v.duplicates), (1, 0, 0));
        assert!(!v.ok());
    }

    #[test]
    fn a_wrong_message_at_a_seq_fails() {
        let mut rs = perfect();
        rs[1].deliveries[1].client_msg_id = "someone-else".into();
        let v = verify(&acked(&[(0, 3), (1, 2)]), &rs);
        assert_eq!(v.mismatched, 1);
        assert!(!v.ok());
    }

    #[test]
    fn a_delivery_for_a_foreign_channel_fails() {
        let mut rs = perfect();
        rs[1].deliveries.push(Delivery {
            channel: 1,
            seq: 1,
            client_msg_id: cid(1, 1),
        });
        let v = verify(&acked(&[(0, 3), (1, 2)]), &rs);
        assert_eq!(v.unexpected, 1);
        assert!(!v.ok());
    }

    #[test]
    fn an_unacked_message_must_still_reach_everyone() {
        // seq 4 of channel 0 was committed but its ack was lost: receiver 0 got it,
        // receiver 1 did not, which is a loss.
        let mut rs = perfect();
        rs[0].deliveries.push(Delivery {
            channel: 0,
            seq: 4,
            client_msg_id: "late".into(),
        });
        let v = verify(&acked(&[(0, 3), (1, 2)]), &rs);
        assert_eq!((v.delivered_unacked, v.missing), (1, 1));
        assert!(!v.ok());
        // delivered to both: fine, just reported
        rs[1].deliveries.push(Delivery {
            channel: 0,
            seq: 4,
            client_msg_id: "late".into(),
        });
        let v = verify(&acked(&[(0, 3), (1, 2)]), &rs);
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.delivered_unacked, 1);
    }
}
