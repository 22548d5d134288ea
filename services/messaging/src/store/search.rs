//! The search query: messages of the given channels matching a query, newest first.

use super::*;

/// How a query matches (validated by the caller).
pub struct Query<'a> {
    /// The text search configuration (an identifier, checked at start).
    pub config: &'a str,
    pub text: &'a str,
    /// Also substrings (pg_trgm index).
    pub substring: bool,
    /// Also misspelt words (pg_trgm word similarity of at least this).
    pub typo: Option<f64>,
    /// Strictly older than this (created_at, id): the previous page's last hit.
    pub before: Option<(DateTime<Utc>, Uuid)>,
    pub limit: u32,
}

/// `%`, `_` and `\` escaped for LIKE.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Messages of `channels` (what a user wrote: not deleted, not system messages) matching
/// `q`, newest first; at most `q.limit + 1` (one more tells the caller a page follows).
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
    let fts = format!(
        "to_tsvector('{config}'::regconfig, m.body) @@ websearch_to_tsquery('{config}'::regconfig, $2)"
    );
    let mut matches = fts;
    if q.substring {
        matches.push_str(" OR m.body ILIKE $3");
    }
    if let Some(similarity) = q.typo {
        // The threshold of `<%` (word similarity), for this transaction only.
        sqlx::query("SELECT set_config('pg_trgm.word_similarity_threshold', $1, true)")
            .bind(similarity.to_string())
            .execute(&mut **tx)
            .await?;
        matches.push_str(" OR $2 <% m.body");
    }
    let matches = format!("({matches})");
    let (before_at, before_id) = q.before.unzip();
    let rows = sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {cols} FROM messages m
         WHERE m.channel_id = ANY($1) AND NOT m.deleted AND m.system IS NULL AND {matches}
           AND ($4::timestamptz IS NULL OR (m.created_at, m.id) < ($4, $5))
         ORDER BY m.created_at DESC, m.id DESC
         LIMIT $6",
        cols = MESSAGE_COLS
            .split(", ")
            .map(|c| format!("m.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", "),
    )))
    .bind(channels)
    .bind(q.text)
    .bind(format!("%{}%", like_escape(q.text)))
    .bind(before_at)
    .bind(before_id)
    .bind(i64::from(q.limit) + 1)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows)
}

/// The channels a search covers: `only` (the caller must be a member), or every channel
/// the caller is a member of now.
pub async fn searchable(
    tx: &mut Tx,
    caller: &UserId,
    only: Option<Uuid>,
) -> Result<Vec<Uuid>, Error> {
    if let Some(channel) = only {
        require_member(&mut *tx, channel, caller).await?;
        return Ok(vec![channel]);
    }
    Ok(
        sqlx::query_scalar("SELECT channel_id FROM members WHERE user_id = $1")
            .bind(caller.as_str())
            .fetch_all(&mut **tx)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_patterns_are_escaped() {
        assert_eq!(super::like_escape(r"50%_a\b"), r"50\%\_a\\b");
    }
}
