//! Message search's indexes and snippets.
//!
//! The indexes (`messages_fts_<config>`: to_tsvector(config, body); `messages_created_at`)
//! are built at start by one replica (an advisory lock), in the background and
//! CONCURRENTLY: on a large table that takes minutes, during which sends and reads go on
//! and searches are answered without the index (slowly). A build an interrupted replica
//! left invalid is dropped and built again. The words of the messages (`search_words`,
//! what typos and substrings are looked up in) are collected by [`collect_words`].

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Advisory lock of the index builder (one replica builds at a time).
const BUILD_LOCK: i64 = 7_150_017;

/// The full-text index's name for a text search configuration.
pub fn fts_index(config: &str) -> String {
    format!("messages_fts_{config}")
}

/// Whether `config` is a text search configuration of the database.
pub async fn config_exists(pool: &PgPool, config: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = $1)")
        .bind(config)
        .fetch_one(pool)
        .await
}

/// Builds the search indexes that are missing (retrying while the database is down);
/// returns once they exist or `stop` is cancelled.
pub async fn ensure_index(pool: PgPool, config: String, stop: CancellationToken) {
    loop {
        let attempt = build(&pool, &config);
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            r = attempt => r,
        };
        match outcome {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "building the search indexes failed; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// One attempt: `Ok(false)` when another replica holds the build lock.
async fn build(pool: &PgPool, config: &str) -> Result<bool, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(BUILD_LOCK)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(false);
    }
    // A GIN build sorts its entries in memory: the default 64 MB makes it spill.
    sqlx::query("SET maintenance_work_mem = '256MB'")
        .execute(&mut *conn)
        .await?;
    let result = build_locked(&mut conn, config).await;
    let _ = sqlx::query("RESET maintenance_work_mem")
        .execute(&mut *conn)
        .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(BUILD_LOCK)
        .execute(&mut *conn)
        .await;
    result.map(|()| true)
}

async fn build_locked(conn: &mut sqlx::PgConnection, config: &str) -> Result<(), sqlx::Error> {
    let fts = fts_index(config);
    let wanted = [
        (
            fts.clone(),
            // fastupdate off: with the pending list, the insert that overflows it merges
            // it under a lock and stalls the sends behind it (~300 ms measured, bench/NOTES.md).
            "gin",
            format!("to_tsvector('{config}'::regconfig, body)"),
        ),
        // Newest-first across channels: for a common word, reading messages by time and
        // stopping at a page is cheaper than collecting every match and sorting.
        (
            "messages_created_at".to_owned(),
            "btree",
            "created_at".to_owned(),
        ),
    ];
    for (name, method, expr) in wanted {
        let with = if method == "gin" {
            " WITH (fastupdate = off)"
        } else {
            ""
        };
        let valid: Option<bool> = sqlx::query_scalar(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE c.relname = $1 AND c.relnamespace = 'messaging'::regnamespace",
        )
        .bind(&name)
        .fetch_optional(&mut *conn)
        .await?;
        match valid {
            Some(true) => continue,
            // Left invalid by an interrupted build (we hold the lock: nobody builds it now).
            Some(false) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS messaging.{name}"
                )))
                .execute(&mut *conn)
                .await?;
            }
            None => {}
        }
        tracing::info!(index = %name, "building a search index (CONCURRENTLY)");
        let started = std::time::Instant::now();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON messaging.messages USING {method} ({expr}){with}"
        )))
        .execute(&mut *conn)
        .await?;
        tracing::info!(index = %name, seconds = started.elapsed().as_secs_f64(), "search index built");
    }
    Ok(())
}

/// Collects the words of new messages into `search_words` until `stop` is cancelled:
/// batch after batch while there is a backlog, then every `words_interval_ms`.
pub async fn collect_words(pool: PgPool, cfg: crate::SearchConfig, stop: CancellationToken) {
    let settle = Duration::from_millis(cfg.words_settle_ms);
    loop {
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            r = crate::store::search::collect_words(
                &pool, &cfg.text_search_config, cfg.words_batch, settle) => r,
        };
        let pause = match read {
            Ok(n) => {
                metrics::counter!("messaging_search_words_messages_total").increment(n);
                if n as i64 >= cfg.words_batch {
                    Duration::ZERO
                } else {
                    Duration::from_millis(cfg.words_interval_ms)
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "collecting search words failed; retrying");
                Duration::from_millis(cfg.words_interval_ms)
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One part of a snippet: text, and whether it matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub text: String,
    pub highlight: bool,
}

/// Characters of context a snippet shows before the first match, and its length at most.
const BEFORE: usize = 60;
const SNIPPET_CHARS: usize = 240;

/// The words a query looks for (highlighted in snippets): its runs of letters and digits,
/// lowercase; websearch operators (`or`, a leading `-`) are not words to highlight.
pub fn query_terms(query: &str) -> Vec<Vec<char>> {
    let mut terms: Vec<Vec<char>> = Vec::new();
    for raw in query.split_whitespace() {
        if raw.starts_with('-') || raw.eq_ignore_ascii_case("or") {
            continue;
        }
        let mut cur = Vec::new();
        for c in raw.chars().chain(std::iter::once(' ')) {
            if c.is_alphanumeric() {
                cur.push(lower(c));
            } else if !cur.is_empty() {
                if !terms.contains(&cur) {
                    terms.push(std::mem::take(&mut cur));
                }
                cur.clear();
            }
        }
    }
    // Longest first, so a longer term wins where two overlap.
    terms.sort_by_key(|t| std::cmp::Reverse(t.len()));
    terms
}

/// One char's lowercase (its first char, so positions stay one to one).
fn lower(c: char) -> char {
    c.to_lowercase().next().unwrap_or(c)
}

/// An excerpt of `body` around the first occurrence of a term (case-insensitive), in
/// parts; occurrences of any term are highlighted. A body with no occurrence (a typo match)
/// gives its beginning, unhighlighted.
pub fn snippet(body: &str, terms: &[Vec<char>]) -> Vec<Part> {
    let chars: Vec<char> = body.chars().collect();
    let lowered: Vec<char> = chars.iter().map(|&c| lower(c)).collect();
    let mut marked = vec![false; chars.len()];
    let mut i = 0;
    while i < lowered.len() {
        let hit = terms
            .iter()
            .find(|t| !t.is_empty() && lowered[i..].starts_with(t));
        match hit {
            Some(t) => {
                marked[i..i + t.len()].iter_mut().for_each(|m| *m = true);
                i += t.len();
            }
            None => i += 1,
        }
    }
    let first = marked.iter().position(|&m| m).unwrap_or(0);
    let (mut start, mut end) = (first.saturating_sub(BEFORE), chars.len());
    if end - start > SNIPPET_CHARS {
        end = start + SNIPPET_CHARS;
    }
    if chars.len() > SNIPPET_CHARS && end == chars.len() {
        start = chars.len().saturating_sub(SNIPPET_CHARS).min(start);
    }
    let mut parts: Vec<Part> = Vec::new();
    if start > 0 {
        parts.push(Part {
            text: "…".into(),
            highlight: false,
        });
    }
    for k in start..end {
        match parts.last_mut() {
            Some(p) if p.highlight == marked[k] && !(k == start && start > 0) => {
                p.text.push(chars[k])
            }
            _ => parts.push(Part {
                text: chars[k].to_string(),
                highlight: marked[k],
            }),
        }
    }
    if end < chars.len() {
        match parts.last_mut() {
            Some(p) if !p.highlight => p.text.push('…'),
            _ => parts.push(Part {
                text: "…".into(),
                highlight: false,
            }),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(parts: &[Part]) -> String {
        parts
            .iter()
            .map(|p| {
                if p.highlight {
                    format!("[{}]", p.text)
                } else {
                    p.text.clone()
                }
            })
            .collect()
    }

    #[test]
    fn terms_are_words_lowercase_without_operators() {
        let t: Vec<String> = query_terms("Hello, \"big World\" or -skip x-ray")
            .into_iter()
            .map(|t| t.into_iter().collect())
            .collect();
        assert_eq!(t, ["hello", "world", "big", "ray", "x"]);
    }

    #[test]
    fn highlights_every_occurrence_case_insensitively() {
        let parts = snippet("Hello world, HELLO again", &query_terms("hello"));
        assert_eq!(render(&parts), "[Hello] world, [HELLO] again");
        assert_eq!(
            render(&snippet("the rocket launch", &query_terms("rock launch"))),
            "the [rock]et [launch]"
        );
    }

    #[test]
    fn no_match_gives_the_beginning() {
        assert_eq!(
            render(&snippet("helo there", &query_terms("hello"))),
            "helo there"
        );
    }

    #[test]
    fn long_bodies_are_cut_around_the_first_match() {
        let body = format!("{}needle{}", "a".repeat(500), "b".repeat(500));
        let s = render(&snippet(&body, &query_terms("needle")));
        assert!(s.starts_with('…') && s.ends_with('…'), "{s}");
        assert!(
            s.contains(&format!("{}[needle]b", "a".repeat(BEFORE))),
            "{s}"
        );
        assert_eq!(s.chars().count(), SNIPPET_CHARS + 2 + 2);
        // A match near the end still shows a full-length excerpt.
        let body = format!("{}needle", "a".repeat(1000));
        let s = render(&snippet(&body, &query_terms("needle")));
        assert!(s.starts_with('…') && s.ends_with("[needle]"), "{s}");
    }

    #[test]
    fn non_ascii_text_keeps_its_characters() {
        let parts = snippet("Ünïcode ÜBER alles", &query_terms("über"));
        assert_eq!(render(&parts), "Ünïcode [ÜBER] alles");
    }
}
