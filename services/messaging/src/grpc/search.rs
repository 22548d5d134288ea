//! SearchMessages: validates the query, finds the messages, cuts snippets.

use parley_proto::messaging::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Messaging, channel_id, decode_cursor, invalid, user};
use crate::{Error, search, store};

/// Opaque search cursor: base64url("<created_at micros>:<message id>") of a page's last hit.
fn encode(m: &store::MessageRow) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}:{}",
        m.created_at.timestamp_micros(),
        m.id
    ))
}

impl Messaging {
    pub(super) async fn do_search(
        &self,
        req: Request<pb::SearchMessagesRequest>,
    ) -> Result<Response<pb::SearchMessagesResponse>, Status> {
        let caller = user(&req)?;
        let pb::SearchMessagesRequest {
            query,
            channel_id: ch,
            cursor,
            limit,
        } = req.into_inner();
        let cfg = &self.config.search;
        let text = query.trim();
        let chars = text.chars().count();
        if chars == 0 {
            return Err(invalid("query must not be empty"));
        }
        if chars > cfg.max_query_chars {
            return Err(invalid(format!(
                "query is {chars} characters; at most {}",
                cfg.max_query_chars
            )));
        }
        parley_kit::domain::check_text("query", text)?;
        let limit = match limit {
            0 => cfg.default_page,
            n if n <= cfg.max_page => n,
            n => {
                return Err(invalid(format!(
                    "limit {n} out of range 1-{}",
                    cfg.max_page
                )));
            }
        };
        let only = if ch.is_empty() {
            None
        } else {
            Some(channel_id(&ch)?)
        };
        let before = if cursor.is_empty() {
            None
        } else {
            Some(decode_cursor(&cursor)?)
        };
        let started = std::time::Instant::now();
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let (channels, newest) = store::search::searchable(&mut tx, &caller, only).await?;
        // A one-word query also finds the words that contain it or resemble it (a
        // misspelling); across words, similar-looking text would match too loosely.
        let also = if (3..=cfg.trigram_max_chars).contains(&chars)
            && !text.contains(char::is_whitespace)
            && !channels.is_empty()
        {
            store::search::similar_words(&mut tx, text, cfg.typo_similarity, cfg.max_similar_words)
                .await?
        } else {
            Vec::new()
        };
        let mut rows = match newest {
            Some(newest) if !channels.is_empty() => {
                let q = store::search::Query {
                    config: &cfg.text_search_config,
                    text,
                    also: &also,
                    before,
                    newest,
                    limit,
                };
                store::search::search(&mut tx, &channels, &q).await?
            }
            _ => Vec::new(),
        };
        tx.commit().await.map_err(Error::from)?;
        metrics::histogram!("messaging_search_seconds").record(started.elapsed().as_secs_f64());
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = if more {
            rows.last().map(encode).unwrap_or_default()
        } else {
            String::new()
        };
        let mut terms = search::query_terms(text);
        terms.extend(also.iter().map(|w| w.chars().collect::<Vec<char>>()));
        terms.sort_by_key(|t| std::cmp::Reverse(t.len()));
        let hits = rows
            .into_iter()
            .map(|m| {
                let snippet = search::snippet(&m.body, &terms)
                    .into_iter()
                    .map(|p| pb::SnippetPart {
                        text: p.text,
                        highlight: p.highlight,
                    })
                    .collect();
                pb::SearchHit {
                    message: Some(m.into()),
                    snippet,
                }
            })
            .collect();
        Ok(Response::new(pb::SearchMessagesResponse {
            hits,
            next_cursor,
        }))
    }
}
