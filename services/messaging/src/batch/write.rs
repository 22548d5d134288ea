//! Writing a lane's batch: the one-statement fast path when the lane knows every channel's
//! counters, else the five-statement transaction (see the parent module), then publishing
//! what committed.

use super::*;

pub(super) struct Writer {
    pool: PgPool,
    publisher: Publisher,
    publish_inline: bool,
    /// Outbox rows published and not yet deleted (the next batch deletes them).
    published: Mutex<Vec<i64>>,
    /// Channels' counters as this replica last committed or read them under their lock:
    /// what the one-statement fast path assumes (and checks).
    known: Mutex<HashMap<Uuid, Counters>>,
}

/// A channel's counters: its last seq and its membership version.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
struct Counters {
    last_seq: i64,
    members_version: i64,
}

/// A channel locked by a batch's transaction: its counters, and the transaction's time.
#[derive(sqlx::FromRow)]
struct Locked {
    id: Uuid,
    #[sqlx(flatten)]
    counters: Counters,
    archived: bool,
    now: DateTime<Utc>,
}

/// Channels whose counters a replica remembers for the fast path; beyond it the memory
/// starts again empty (each channel's next batch takes the five-statement path once).
const KNOWN_MAX: usize = 100_000;

/// Deletes published outbox rows that no batch took within `every` (an idle service).
/// Ends when the writer is gone.
pub(super) async fn clear_idle(writer: std::sync::Weak<Writer>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Vec<i64> = Vec::new();
    loop {
        tick.tick().await;
        let Some(w) = writer.upgrade() else {
            return;
        };
        // Only rows that waited a whole tick: under load the batches take them first.
        let stale: Vec<i64> = {
            let mut p = w.published.lock().unwrap_or_else(|e| e.into_inner());
            let (stale, fresh): (Vec<i64>, Vec<i64>) =
                p.drain(..).partition(|id| seen.binary_search(id).is_ok());
            *p = fresh;
            seen = p.clone();
            seen.sort_unstable();
            stale
        };
        if !stale.is_empty() {
            outbox::clear_ids(&w.pool, &stale).await;
        }
    }
}

/// The decision for one request of a batch.
enum Outcome {
    Failed(Error),
    /// Sent before (idempotent retry): the original.
    Existing(MessageRow),
    /// A retry of a new message of this same batch: index into the new messages.
    Retry(usize),
    /// New: index into the batch's new messages.
    New(usize),
}

impl Writer {
    pub(super) fn new(pool: PgPool, publisher: Publisher, publish_inline: bool) -> Self {
        Self {
            pool,
            publisher,
            publish_inline,
            published: Mutex::new(Vec::new()),
            known: Mutex::new(HashMap::new()),
        }
    }

    fn lock_published(&self) -> std::sync::MutexGuard<'_, Vec<i64>> {
        self.published.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Counters>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers channels' counters as committed (or read under their lock).
    fn remember(&self, channels: impl Iterator<Item = (Uuid, Counters)>) {
        let mut known = self.lock_known();
        if known.len() > KNOWN_MAX {
            known.clear();
        }
        known.extend(channels);
    }

    /// The fast path: when this replica knows the counters of every channel of the batch,
    /// it assigns seqs and encodes the events first, and writes them in one statement that
    /// checks, under the channel locks, that nothing moved (`store::write_sends_checked`):
    /// one round trip, and the locks are held only for that statement and its commit.
    /// `None` when a channel is not known or something moved (another replica sent, the
    /// membership changed, a sender is not a member, a retry of an earlier send): nothing
    /// was written, and the five-statement transaction decides.
    async fn try_fast(&self, batch: &[Request]) -> Option<Written> {
        // Sends with attachments lock and link them: the transaction's job.
        if batch.iter().any(|r| !r.attachments.is_empty()) {
            return None;
        }
        let mut channels: HashMap<Uuid, store::Assumed> = HashMap::new();
        {
            let known = self.lock_known();
            for r in batch {
                let c = known.get(&r.channel)?;
                channels.insert(
                    r.channel,
                    store::Assumed {
                        channel: r.channel,
                        seen: c.last_seq,
                        version: c.members_version,
                        new: c.last_seq,
                    },
                );
            }
        }
        // The database stores microseconds: the answer must equal what history returns.
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut rows: Vec<MessageRow> = Vec::with_capacity(batch.len());
        let mut first_of: HashMap<store::SendKey<'_>, usize> = HashMap::new();
        for r in batch {
            let key = r.key();
            if let Some(&k) = first_of.get(&key) {
                outcomes.push(Outcome::Retry(k));
                continue;
            }
            let seq = channels.get_mut(&r.channel).map_or(0, |c| {
                c.new += 1;
                c.new
            });
            first_of.insert(key, rows.len());
            rows.push(new_row(r, seq, now));
            outcomes.push(Outcome::New(rows.len() - 1));
        }
        let mut assumed: Vec<store::Assumed> = channels.values().copied().collect();
        assumed.sort_unstable_by_key(|a| a.channel);
        let events = encode_events(batch, &outcomes, &rows, |c| {
            channels.get(&c).map_or(0, |a| a.version)
        });
        let done = std::mem::take(&mut *self.lock_published());
        match store::write_sends_checked(&self.pool, now, &assumed, &rows, events, &done).await {
            Ok(Some(pending)) => {
                metrics::counter!("messaging_send_batches_total", "path" => "fast").increment(1);
                self.remember(assumed.iter().map(|a| {
                    (
                        a.channel,
                        Counters {
                            last_seq: a.new,
                            members_version: a.version,
                        },
                    )
                }));
                Some(Written {
                    outcomes,
                    rows,
                    pending,
                })
            }
            result => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "one-statement send failed; the transaction decides");
                }
                self.lock_published().extend(done);
                let mut known = self.lock_known();
                for c in channels.keys() {
                    known.remove(c);
                }
                None
            }
        }
    }

    /// Writes the batch; what committed is returned for publishing (in commit order),
    /// having answered nobody yet. A failed batch is answered here. A batch the database
    /// refused for a value in it (`is_data_error`: one caller's bad input) is written again
    /// send by send, so only that caller's send fails.
    pub(super) async fn commit(&self, batch: Vec<Request>) -> Vec<Committed> {
        match self.commit_together(batch).await {
            Ok(c) => c.into_iter().collect(),
            Err(batch) => {
                metrics::counter!("messaging_send_batches_split_total").increment(1);
                let mut committed = Vec::with_capacity(batch.len());
                for r in batch {
                    // A caller that gave up meanwhile is not written.
                    if r.reply.is_closed() {
                        continue;
                    }
                    // One send alone is never split again: it is answered with its error.
                    if let Ok(Some(c)) = self.commit_together(vec![r]).await {
                        committed.push(c);
                    }
                }
                committed
            }
        }
    }

    /// Writes the batch in one transaction. `Err` gives back a batch of more than one send
    /// that failed on a data error, unanswered, for `commit` to split.
    async fn commit_together(
        &self,
        batch: Vec<Request>,
    ) -> Result<Option<Committed>, Vec<Request>> {
        let n = batch.len();
        metrics::histogram!("messaging_send_batch_size").record(n as f64);
        let db_spans: Vec<tracing::Span> = batch
            .iter()
            .map(|r| {
                tracing::info_span!(
                    parent: &r.span,
                    "INSERT messaging.messages",
                    otel.kind = "client",
                    db.system.name = "postgresql",
                    db.namespace = "messaging",
                    db.operation.name = "INSERT",
                    db.collection.name = "messages",
                    db.operation.batch.size = n,
                    channel = %r.channel,
                )
            })
            .collect();
        let started = Instant::now();
        let result = self.transact(&batch).await;
        metrics::histogram!("messaging_send_transaction_seconds")
            .record(started.elapsed().as_secs_f64());
        drop(db_spans);
        match result {
            Ok(written) => {
                metrics::counter!("messaging_messages_sent_total")
                    .increment(written.rows.len() as u64);
                Ok(Some(Committed { batch, written }))
            }
            Err(Error::Db(e)) if n > 1 && parley_kit::db::is_data_error(&e) => {
                tracing::info!(error = %e, size = n, "send batch refused a value; writing its sends one by one");
                Err(batch)
            }
            Err(e) => {
                let status = Status::from(e);
                tracing::warn!(error = %status.message(), size = n, "send batch failed");
                for r in batch {
                    let _ = r.reply.send(Err(status.clone()));
                }
                Ok(None)
            }
        }
    }

    /// Publishes a committed batch's events, then answers its callers (an acknowledged
    /// send has reached Redis unless publishing failed, when the sweeper repairs it).
    pub(super) async fn publish(&self, c: Committed) {
        let Committed {
            batch,
            written:
                Written {
                    outcomes,
                    rows,
                    pending,
                },
        } = c;
        let started = Instant::now();
        if self.publish_inline && !pending.is_empty() {
            let spans: Vec<tracing::Span> = batch
                .iter()
                .zip(&outcomes)
                .filter(|(_, o)| matches!(o, Outcome::New(_)))
                .map(|(r, _)| {
                    tracing::info_span!(
                        parent: &r.span,
                        "publish messaging:events",
                        otel.kind = "producer",
                        messaging.system = "redis",
                        messaging.operation.type = "send",
                        messaging.destination.name = outbox::STREAM,
                        messaging.batch.message_count = pending.len(),
                    )
                })
                .collect();
            let published = outbox::publish(&self.publisher, &pending).await;
            drop(spans);
            reply_all(batch, outcomes, &rows);
            if published {
                self.lock_published().extend(pending.iter().map(|p| p.id));
            }
        } else {
            reply_all(batch, outcomes, &rows);
        }
        metrics::histogram!("messaging_send_publish_seconds")
            .record(started.elapsed().as_secs_f64());
    }

    /// Runs the batch's transaction; returns each request's outcome, the new rows and
    /// their outbox entries.
    async fn transact(&self, batch: &[Request]) -> Result<Written, Error> {
        if let Some(written) = self.try_fast(batch).await {
            return Ok(written);
        }
        metrics::counter!("messaging_send_batches_total", "path" => "transaction").increment(1);
        let mut tx = self.pool.begin().await?;

        // 1. Lock the channels in id order; their counters and the transaction's time.
        let mut ids: Vec<Uuid> = batch.iter().map(|r| r.channel).collect();
        ids.sort_unstable();
        ids.dedup();
        let locked: Vec<Locked> = sqlx::query_as(
            "SELECT id, last_seq, members_version, archived_at IS NOT NULL AS archived, now() AS now
             FROM channels
             WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let Some(now) = locked.first().map(|r| r.now) else {
            // No channel exists: every request is NOT_FOUND, nothing to write.
            tx.rollback().await?;
            let outcomes = batch
                .iter()
                .map(|r| Outcome::Failed(not_found(r.channel)))
                .collect();
            return Ok(Written {
                outcomes,
                rows: Vec::new(),
                pending: Vec::new(),
            });
        };
        let mut channels: HashMap<Uuid, Counters> =
            locked.iter().map(|r| (r.id, r.counters)).collect();
        let archived: HashSet<Uuid> = locked.iter().filter(|r| r.archived).map(|r| r.id).collect();

        // 2. Membership and earlier sends with the same client_msg_id; the attachments the
        //    batch sends, locked.
        let found = store::check_sends(&mut tx, batch.iter().map(Request::key)).await?;
        let attached: Vec<Uuid> = batch
            .iter()
            .flat_map(|r| r.attachments.iter().map(|a| a.id))
            .collect();
        let mut uploads: HashMap<Uuid, store::attachments::AttachmentRow> = if attached.is_empty() {
            HashMap::new()
        } else {
            store::attachments::lock(&mut tx, &attached)
                .await?
                .into_iter()
                .map(|a| (a.id, a))
                .collect()
        };

        // Decide, and assign seqs in request order.
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut rows: Vec<MessageRow> = Vec::new();
        let mut first_of: HashMap<store::SendKey<'_>, usize> = HashMap::new();
        for (r, f) in batch.iter().zip(found) {
            let key = r.key();
            let outcome = if !channels.contains_key(&r.channel) {
                Outcome::Failed(not_found(r.channel))
            } else if !f.member {
                Outcome::Failed(Error::PermissionDenied(format!(
                    "not a member of channel {}",
                    r.channel
                )))
            } else if let Some(m) = f.existing {
                // A retry of a send acknowledged before is answered with it, whatever
                // changed since.
                Outcome::Existing(m)
            } else if let Some(refused) =
                store::write_refusal(r.channel, archived.contains(&r.channel), f.muted, f.blocked)
            {
                Outcome::Failed(refused)
            } else if let Some(&k) = first_of.get(&key) {
                Outcome::Retry(k)
            } else if let Some(refused) = take_uploads(r, &mut uploads) {
                Outcome::Failed(refused)
            } else {
                first_of.insert(key, rows.len());
                let counter = channels.get_mut(&r.channel).map(|c| {
                    c.last_seq += 1;
                    c.last_seq
                });
                rows.push(new_row(r, counter.unwrap_or_default(), now));
                Outcome::New(rows.len() - 1)
            };
            outcomes.push(outcome);
        }
        if rows.is_empty() {
            tx.commit().await?;
            self.remember(channels.into_iter());
            return Ok(Written {
                outcomes,
                rows,
                pending: Vec::new(),
            });
        }

        // 3. Counters, messages and outbox events in one statement.
        let touched: HashSet<Uuid> = rows.iter().map(|m| m.channel_id).collect();
        let counters: Vec<(Uuid, i64)> = touched
            .into_iter()
            .filter_map(|id| channels.get(&id).map(|c| (id, c.last_seq)))
            .collect();
        let events = encode_events(batch, &outcomes, &rows, |c| {
            channels.get(&c).map_or(0, |v| v.members_version)
        });
        let done = std::mem::take(&mut *self.lock_published());
        let written = async {
            let pending = store::write_sends(&mut tx, now, &counters, &rows, events, &done).await?;
            tx.commit().await?;
            Ok::<_, Error>(pending)
        }
        .await;
        match written {
            Ok(pending) => {
                self.remember(channels.into_iter());
                Ok(Written {
                    outcomes,
                    rows,
                    pending,
                })
            }
            Err(e) => {
                // Not deleted: the next batch (or the idle clearer) tries again.
                self.lock_published().extend(done);
                Err(e)
            }
        }
    }
}

/// What a batch wrote: each request's outcome, the new messages (which `Outcome::New` and
/// `Outcome::Retry` index) and their outbox entries.
struct Written {
    outcomes: Vec<Outcome>,
    rows: Vec<MessageRow>,
    pending: Vec<Pending>,
}

/// A committed batch waiting to be published and answered.
pub(super) struct Committed {
    batch: Vec<Request>,
    written: Written,
}

/// Takes a send's attachments from the batch's locked uploads: each must still exist,
/// undeleted, be the sender's own in this channel and not be in another message (an
/// earlier send of this batch took it out of `uploads`). Nothing is taken when one fails.
fn take_uploads(
    r: &Request,
    uploads: &mut HashMap<Uuid, store::attachments::AttachmentRow>,
) -> Option<Error> {
    for a in &r.attachments {
        let refused = match uploads.get(&a.id) {
            None => Error::NotFound(format!("attachment {} not found", a.id)),
            Some(u) if u.doomed_at.is_some() => Error::NotFound(format!(
                "attachment {} not found (deleted or expired)",
                a.id
            )),
            Some(u) if u.channel_id != r.channel || u.uploader_id != r.caller.as_str() => {
                Error::PermissionDenied(format!(
                    "attachment {} is not your upload to this channel",
                    a.id
                ))
            }
            Some(u) if u.message_id.is_some() => {
                Error::Conflict(format!("attachment {} is already in a message", a.id))
            }
            Some(_) => continue,
        };
        return Some(refused);
    }
    for a in &r.attachments {
        if let Some(u) = uploads.get_mut(&a.id) {
            // Taken by this send (its message id is not known yet).
            u.message_id = Some(Uuid::nil());
        }
    }
    None
}

fn new_row(r: &Request, seq: i64, now: DateTime<Utc>) -> MessageRow {
    MessageRow {
        id: Uuid::now_v7(),
        channel_id: r.channel,
        seq,
        sender_id: r.caller.as_str().to_owned(),
        client_msg_id: r.cid.as_str().to_owned(),
        body: r.body.as_str().to_owned(),
        created_at: now,
        edited_at: None,
        deleted: false,
        system: None,
        attachments: (!r.attachments.is_empty())
            .then(|| serde_json::to_string(&r.attachments).unwrap_or_default()),
    }
}

/// The outbox events of the batch's new messages, in order, each with its request's trace
/// context and its channel's membership version.
fn encode_events(
    batch: &[Request],
    outcomes: &[Outcome],
    rows: &[MessageRow],
    members_version: impl Fn(Uuid) -> i64,
) -> Vec<store::NewEvent> {
    batch
        .iter()
        .zip(outcomes)
        .filter_map(|(r, o)| {
            let Outcome::New(k) = o else { return None };
            let m = &rows[*k];
            let payload = ev::event::Payload::MessageCreated(ev::MessageCreated {
                message: Some(m.clone().into()),
                members_version: members_version(m.channel_id),
            });
            let trace = r.span.in_scope(parley_kit::propagation::inject_map);
            Some(store::new_event(Some(m.channel_id), payload, trace))
        })
        .collect()
}

fn not_found(channel: Uuid) -> Error {
    Error::NotFound(format!("channel {channel} not found"))
}

fn reply_all(batch: Vec<Request>, outcomes: Vec<Outcome>, rows: &[MessageRow]) {
    for (r, o) in batch.into_iter().zip(outcomes) {
        let answer = match o {
            Outcome::Failed(e) => Err(Status::from(e)),
            Outcome::Existing(m) => Ok((m, false)),
            Outcome::New(k) => Ok((rows[k].clone(), true)),
            Outcome::Retry(k) => Ok((rows[k].clone(), false)),
        };
        if let Ok((m, _)) = &answer {
            r.span.record("seq", m.seq);
        }
        let _ = r.reply.send(answer);
    }
}
