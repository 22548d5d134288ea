//! The search query: messages of the given channels matching a query, newest first.

use super::*;

/// How a query matches (validated by the caller).
pub struct Query<'a> {
    /// The text search configuration (an identifier, checked at start).
    pub config: &'a str,
    pub text: &'a str,
    /// Words of the messages that also count as matches: the ones containing the (one-word)
    /// query or resembling it ([`similar_words`]).
    pub also: &'a [String],
    /// Strictly older than this (created_at, id): the previous page's last hit.
    pub before: Option<(DateTime<Utc>, Uuid)>,
    /// No message of the channels is newer than this (their newest `last_activity_at`): a
    /// newest-first read starts there instead of walking other channels' newer messages.
    pub newest: DateTime<Utc>,
    pub limit: u32,
}

/// A word as a `to_tsquery` operand: quoted, its quotes and backslashes doubled.
fn quote_lexeme(w: &str) -> String {
    let mut out = String::with_capacity(w.len() + 2);
    out.push('\'');
    for c in w.chars() {
        if matches!(c, '\'' | '\\') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Words of the messages (`search_words`) that contain `word` or resemble it (pg_trgm
/// trigram similarity of at least `similarity`: symmetric, so a short word that is only a
/// part of the query does not count), closest first, at most `max`.
pub async fn similar_words(
    tx: &mut Tx,
    word: &str,
    similarity: f64,
    max: i64,
) -> Result<Vec<String>, Error> {
    sqlx::query("SELECT set_config('pg_trgm.similarity_threshold', $1, true)")
        .bind(similarity.to_string())
        .execute(&mut **tx)
        .await?;
    let word = word.to_lowercase();
    Ok(sqlx::query_scalar(
        "SELECT word FROM search_words
         WHERE (word LIKE $2 OR word % $1) AND word <> $1
         ORDER BY word <-> $1, length(word), word
         LIMIT $3",
    )
    .bind(&word)
    .bind(super::contains_pattern(&word))
    .bind(max)
    .fetch_all(&mut **tx)
    .await?)
}

/// Messages of `channels` (what a user wrote: not deleted, not system messages) matching
/// `q` by the full-text index, newest first; at most `q.limit + 1` (one more tells the
/// caller a page follows).
#[tracing::instrument(
    name = "SELECT messaging.messages (search)",
    skip_all,
    fields(
        otel.kind = "client",
        db.system.name = "postgresql",
        db.namespace = "messaging",
        db.operation.name = "SELECT",
        db.collection.name = "messages",
        channels = channels.len(),
    )
)]
pub async fn search(
    tx: &mut Tx,
    channels: &[Uuid],
    q: &Query<'_>,
) -> Result<Vec<MessageRow>, Error> {
    let config = q.config;
    let words: Vec<String> = q.also.iter().map(|w| quote_lexeme(w)).collect();
    let tsquery = if words.is_empty() {
        format!("websearch_to_tsquery('{config}'::regconfig, $2)")
    } else {
        format!(
            "(websearch_to_tsquery('{config}'::regconfig, $2) || to_tsquery('{config}'::regconfig, $3))"
        )
    };
    // A plan for these values: a generic plan (what a prepared statement gets after five
    // runs) cannot tell a word in half the messages from a rare one, nor use the bound on
    // created_at, and reads a common word's matches in full (200 ms in the bench instead of
    // under 1 ms).
    sqlx::query("SELECT set_config('plan_cache_mode', 'force_custom_plan', true)")
        .execute(&mut **tx)
        .await?;
    let (before_at, before_id) = q.before.unzip();
    let rows = sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLS} FROM messages m
         WHERE m.channel_id = ANY($1) AND NOT m.deleted AND m.system IS NULL
           AND to_tsvector('{config}'::regconfig, m.body) @@ {tsquery}
           AND ($4::timestamptz IS NULL OR (m.created_at, m.id) < ($4, $5))
           AND m.created_at <= $7
         ORDER BY m.created_at DESC, m.id DESC
         LIMIT $6"
    )))
    .bind(channels)
    .bind(q.text)
    .bind(words.join(" | "))
    .bind(before_at)
    .bind(before_id)
    .bind(i64::from(q.limit) + 1)
    .bind(q.newest)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows)
}

/// Adds the words of messages written after the last batch (up to `batch` messages, only
/// those older than `settle`, so a send committing late with an earlier time is not
/// skipped) to `search_words`; returns how many messages it read.
pub async fn collect_words(
    pool: &sqlx::PgPool,
    config: &str,
    batch: i64,
    settle: std::time::Duration,
) -> Result<u64, Error> {
    let mut tx = pool.begin().await?;
    // One collector at a time, whichever replica: the others skip this round.
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(7150018)")
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(0);
    }
    let read: (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH since AS (
             SELECT coalesce((SELECT created_at FROM search_words_position), '-infinity') AS at,
                    coalesce((SELECT id FROM search_words_position), '00000000-0000-0000-0000-000000000000'::uuid) AS id
         ), batch AS (
             SELECT m.created_at, m.id, m.body FROM messages m, since
             WHERE m.created_at >= since.at AND (m.created_at, m.id) > (since.at, since.id)
               AND m.created_at < now() - make_interval(secs => $2)
             ORDER BY m.created_at, m.id
             LIMIT $1
         ), added AS (
             INSERT INTO search_words (word)
             SELECT DISTINCT w FROM batch b,
                    unnest(tsvector_to_array(to_tsvector('{config}'::regconfig, b.body))) w
             WHERE length(w) BETWEEN 3 AND 64
             ON CONFLICT DO NOTHING
         ), last AS (
             SELECT created_at, id FROM batch ORDER BY created_at DESC, id DESC LIMIT 1
         ), moved AS (
             INSERT INTO search_words_position (one, created_at, id)
             SELECT true, created_at, id FROM last
             ON CONFLICT (one) DO UPDATE SET created_at = excluded.created_at, id = excluded.id
         )
         SELECT count(*) FROM batch"
    )))
    .bind(batch)
    .bind(settle.as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(read.0.max(0) as u64)
}

/// The channels a search covers: `only` (the caller must be a member), or every channel
/// the caller is a member of now; and the time of their newest message (every message
/// moves its channel's `last_activity_at` to its own `created_at`), `None` with no channel.
pub async fn searchable(
    tx: &mut Tx,
    caller: &UserId,
    only: Option<Uuid>,
) -> Result<(Vec<Uuid>, Option<DateTime<Utc>>), Error> {
    let channels: Vec<Uuid> = if let Some(channel) = only {
        require_member(&mut *tx, channel, caller).await?;
        vec![channel]
    } else {
        sqlx::query_scalar("SELECT channel_id FROM members WHERE user_id = $1")
            .bind(caller.as_str())
            .fetch_all(&mut **tx)
            .await?
    };
    let newest: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT max(last_activity_at) FROM channels WHERE id = ANY($1)")
            .bind(&channels)
            .fetch_one(&mut **tx)
            .await?;
    Ok((channels, newest))
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_patterns_are_escaped() {
        assert_eq!(super::super::contains_pattern(r"50%_a\b"), r"%50\%\_a\\b%");
    }

    #[test]
    fn lexemes_are_quoted_for_to_tsquery() {
        assert_eq!(super::quote_lexeme("rocket"), "'rocket'");
        assert_eq!(super::quote_lexeme(r"o'k\x"), r"'o''k\\x'");
    }
}
