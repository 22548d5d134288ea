//! Attachments: announcing an upload (a presigned PUT), checking uploads before a send
//! takes them, and downloads (a presigned GET or the public URL).

use std::time::Duration;

use parley_kit::domain::{UserId, check_text};
use parley_proto::messaging::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{Messaging, channel_id, invalid, user};
use crate::{
    Error,
    storage::Storage,
    store::{self, attachments::Meta},
};

/// The type's essence: what comes before any `;` parameters, trimmed, lowercase.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn storage_down(e: impl std::fmt::Display) -> Status {
    tracing::warn!(error = %e, "object storage unavailable");
    metrics::counter!("messaging_storage_errors_total").increment(1);
    parley_kit::ErrorCode::Unavailable.status("object storage is unavailable; retry later")
}

impl Messaging {
    fn storage(&self) -> Result<&Storage, Status> {
        self.storage.as_ref().ok_or_else(|| {
            parley_kit::ErrorCode::Unavailable
                .status("attachments are not enabled on this deployment (no object storage)")
        })
    }

    /// Validates an announced upload.
    fn new_attachment(
        &self,
        req: pb::CreateAttachmentRequest,
    ) -> Result<store::attachments::NewAttachment, Status> {
        let a = &self.config.attachments;
        let channel = channel_id(&req.channel_id)?;
        let filename = req.filename.trim();
        let chars = filename.chars().count();
        if chars == 0 || chars > a.max_filename_chars {
            return Err(invalid(format!(
                "filename must be 1-{} characters",
                a.max_filename_chars
            )));
        }
        check_text("filename", filename)?;
        if filename.contains(['/', '\\', '\n', '\r', '\t']) {
            return Err(invalid(
                "filename must not contain '/', '\\\\' or line breaks",
            ));
        }
        let content_type = req.content_type.trim();
        if content_type.is_empty() || content_type.len() > 200 || !content_type.is_ascii() {
            return Err(invalid(
                "content_type must be a MIME type such as image/png",
            ));
        }
        check_text("content_type", content_type)?;
        let kind = essence(content_type);
        if !a
            .allowed_types
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&kind))
        {
            return Err(Error::UnsupportedMediaType(format!(
                "content type {kind} is not allowed; allowed: {}",
                a.allowed_types.join(", ")
            ))
            .into());
        }
        if req.size == 0 {
            return Err(invalid("size must be positive"));
        }
        if req.size > a.max_bytes {
            return Err(Error::TooLarge(format!(
                "size {} bytes is over the limit of {} bytes",
                req.size, a.max_bytes
            ))
            .into());
        }
        Ok(store::attachments::NewAttachment {
            channel,
            filename: filename.to_owned(),
            content_type: content_type.to_owned(),
            size: req.size,
            width: req.width,
            height: req.height,
            duration_ms: req.duration_ms,
        })
    }

    pub(super) async fn do_create_attachment(
        &self,
        req: Request<pb::CreateAttachmentRequest>,
    ) -> Result<Response<pb::CreateAttachmentResponse>, Status> {
        let caller = user(&req)?;
        let storage = self.storage()?;
        let new = self.new_attachment(req.into_inner())?;
        let a = &self.config.attachments;
        let limits = store::attachments::UploadLimits {
            per_minute: a.uploads_per_minute,
            quota_bytes: a.user_quota_bytes,
        };
        let row = store::attachments::create(self.tx().await?, &caller, new, limits).await?;
        let ttl = Duration::from_secs(a.upload_ttl_secs);
        let key = storage.key(row.channel_id, row.id);
        let upload = storage.presign_put(&key, &row.content_type, row.size.max(0) as u64, ttl);
        metrics::counter!("messaging_attachments_created_total").increment(1);
        let expires_at = chrono::Utc::now() + ttl;
        Ok(Response::new(pb::CreateAttachmentResponse {
            attachment: Some(Meta::from(&row).into()),
            upload_url: upload.url,
            method: "PUT".into(),
            headers: upload.headers.into_iter().collect(),
            expires_at: Some(store::ts(expires_at)),
        }))
    }

    pub(super) async fn do_get_attachment(
        &self,
        req: Request<pb::GetAttachmentRequest>,
    ) -> Result<Response<pb::GetAttachmentResponse>, Status> {
        let caller = user(&req)?;
        let id = Uuid::parse_str(&req.get_ref().attachment_id)
            .map_err(|_| invalid("attachment_id must be a UUID"))?;
        let storage = self.storage()?;
        let row = store::attachments::for_download(&mut *self.conn().await?, &caller, id).await?;
        let a = &self.config.attachments;
        let key = storage.key(row.channel_id, row.id);
        let (download_url, expires_at) = if a.public_base_url.is_empty() {
            let ttl = Duration::from_secs(a.download_ttl_secs);
            (
                storage.presign_get(&key, ttl),
                Some(store::ts(chrono::Utc::now() + ttl)),
            )
        } else {
            (Storage::public_url(&a.public_base_url, &key), None)
        };
        Ok(Response::new(pb::GetAttachmentResponse {
            attachment: Some(Meta::from(&row).into()),
            channel_id: row.channel_id.to_string(),
            download_url,
            expires_at,
        }))
    }

    /// Parses a send's `attachment_ids`: UUIDs, no repeats, at most
    /// `attachments.max_per_message`.
    pub(super) fn attachment_ids(&self, ids: &[String]) -> Result<Vec<Uuid>, Status> {
        let max = self.config.attachments.max_per_message;
        if ids.len() > max {
            return Err(invalid(format!(
                "{} attachments; at most {max} per message",
                ids.len()
            )));
        }
        let mut out = Vec::with_capacity(ids.len());
        for s in ids {
            let id = Uuid::parse_str(s)
                .map_err(|_| invalid(format!("attachment id {s:?} is not a UUID")))?;
            if out.contains(&id) {
                return Err(invalid(format!("attachment {id} is given twice")));
            }
            out.push(id);
        }
        Ok(out)
    }

    /// Checks a send's uploads before it is queued: each exists, undeleted, is the
    /// caller's own announced in this channel, and storage holds its object with the
    /// announced size and type (asked once per upload; a match is remembered). Returns
    /// their metadata in the order given. Whether they are still free is decided in the
    /// send's transaction.
    pub(super) async fn verify_uploads(
        &self,
        caller: &UserId,
        channel: Uuid,
        ids: &[Uuid],
    ) -> Result<Vec<Meta>, Status> {
        let storage = self.storage()?;
        let rows = store::attachments::load(&mut *self.conn().await?, ids).await?;
        let mut metas = Vec::with_capacity(ids.len());
        let mut unverified = Vec::new();
        for id in ids {
            let Some(row) = rows.iter().find(|r| r.id == *id && r.doomed_at.is_none()) else {
                return Err(Error::NotFound(format!("attachment {id} not found")).into());
            };
            if row.channel_id != channel {
                return Err(Error::PermissionDenied(format!(
                    "attachment {id} belongs to another channel"
                ))
                .into());
            }
            if row.uploader_id != caller.as_str() {
                return Err(Error::PermissionDenied(format!(
                    "attachment {id} was uploaded by another user"
                ))
                .into());
            }
            if row.verified_at.is_none() {
                unverified.push(row);
            }
            metas.push(Meta::from(row));
        }
        let checks = unverified.iter().map(|row| async move {
            let key = storage.key(row.channel_id, row.id);
            let found = storage.head(&key).await.map_err(storage_down)?;
            let Some(object) = found else {
                return Err(Error::Conflict(format!(
                    "attachment {} has not been uploaded yet",
                    row.id
                ))
                .into());
            };
            let announced = row.size.max(0) as u64;
            if object.size != announced {
                return Err(Error::Conflict(format!(
                    "attachment {}: the upload is {} bytes, {announced} were announced",
                    row.id, object.size
                ))
                .into());
            }
            if !object.content_type.eq_ignore_ascii_case(&row.content_type) {
                return Err(Error::Conflict(format!(
                    "attachment {}: the upload's type is {:?}, {:?} was announced",
                    row.id, object.content_type, row.content_type
                ))
                .into());
            }
            Ok::<_, Status>(row.id)
        });
        let verified = futures::future::try_join_all(checks).await?;
        if !verified.is_empty() {
            store::attachments::mark_verified(&mut *self.conn().await?, &verified).await?;
        }
        Ok(metas)
    }
}
