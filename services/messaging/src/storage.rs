//! Object storage for attachments: any S3-compatible service (AWS S3, Cloudflare R2,
//! MinIO), through presigned requests (`rusty-s3` signs, `reqwest` sends). The bytes never
//! pass through Parley: clients upload to a presigned PUT and download from a presigned
//! GET; messaging itself only asks HEAD (does the upload exist, with the announced size and
//! type?) and DELETE (clean-up).

use std::time::Duration;

use rusty_s3::{Bucket, Credentials, S3Action as _, UrlStyle, actions};
use secrecy::ExposeSecret as _;
use uuid::Uuid;

use crate::StorageConfig;

/// How long the presigned URLs messaging signs for its own requests last.
const OWN_REQUEST_TTL: Duration = Duration::from_secs(60);

/// A bucket of an S3-compatible service, with the credentials to sign for it.
#[derive(Clone)]
pub struct Storage {
    /// Where messaging sends its own requests.
    bucket: Bucket,
    /// What presigned URLs for clients name (`storage.client_endpoint`, else the same).
    client_bucket: Bucket,
    credentials: Credentials,
    http: reqwest::Client,
    prefix: String,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("bucket", &self.bucket.base_url().as_str())
            .finish_non_exhaustive()
    }
}

/// A storage request that failed: the service is down, slow or refused us (retryable from
/// the caller's point of view).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object storage request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("object storage answered HTTP {0}")]
    Status(u16),
}

/// What a HEAD of an object found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub size: u64,
    pub content_type: String,
}

/// A presigned upload: the URL and the headers the client must send with it (signed).
#[derive(Debug, Clone)]
pub struct Upload {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

impl Storage {
    /// The bucket of `cfg` (its endpoint must be set).
    pub fn new(cfg: &StorageConfig) -> Result<Self, String> {
        let endpoint: url::Url = cfg
            .endpoint
            .parse()
            .map_err(|e| format!("endpoint {:?}: {e}", cfg.endpoint))?;
        let style = if cfg.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = |endpoint: url::Url| {
            Bucket::new(endpoint, style, cfg.bucket.clone(), cfg.region.clone())
                .map_err(|e| format!("bucket {:?}: {e}", cfg.bucket))
        };
        let client_bucket = if cfg.client_endpoint.is_empty() {
            bucket(endpoint.clone())?
        } else {
            bucket(
                cfg.client_endpoint
                    .parse()
                    .map_err(|e| format!("client_endpoint {:?}: {e}", cfg.client_endpoint))?,
            )?
        };
        let bucket = bucket(endpoint)?;
        if cfg.bucket.is_empty() || cfg.region.is_empty() {
            return Err("bucket and region must be set".into());
        }
        let credentials = Credentials::new(
            cfg.access_key_id.clone(),
            cfg.secret_access_key.expose_secret().to_owned(),
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms.max(1)))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.max(1)))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            bucket,
            client_bucket,
            credentials,
            http,
            prefix: cfg.key_prefix.clone(),
        })
    }

    /// The object key of an attachment.
    pub fn key(&self, channel: Uuid, id: Uuid) -> String {
        format!("{}{channel}/{id}", self.prefix)
    }

    /// The object's URL under `base` (a public, e.g. CDN, base URL): `<base>/<key>`.
    pub fn public_url(base: &str, key: &str) -> String {
        format!("{}/{key}", base.trim_end_matches('/'))
    }

    /// A presigned PUT of exactly `size` bytes of `content_type`: both headers are part of
    /// the signature, so storage that checks signatures (S3, R2, MinIO) refuses an upload
    /// of another length or type.
    pub fn presign_put(&self, key: &str, content_type: &str, size: u64, ttl: Duration) -> Upload {
        let length = size.to_string();
        let mut put = actions::PutObject::new(&self.client_bucket, Some(&self.credentials), key);
        put.headers_mut().insert("content-type", content_type);
        put.headers_mut().insert("content-length", length.as_str());
        Upload {
            url: put.sign(ttl).into(),
            headers: vec![
                ("content-type".into(), content_type.into()),
                ("content-length".into(), length.clone()),
            ],
        }
    }

    /// A presigned GET of the object.
    pub fn presign_get(&self, key: &str, ttl: Duration) -> String {
        actions::GetObject::new(&self.client_bucket, Some(&self.credentials), key)
            .sign(ttl)
            .into()
    }

    /// The object's size and type; `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<Object>, StorageError> {
        let url = actions::HeadObject::new(&self.bucket, Some(&self.credentials), key)
            .sign(OWN_REQUEST_TTL);
        let resp = self.http.head(url).send().await?;
        match resp.status().as_u16() {
            404 => Ok(None),
            200 => {
                let header = |name: &str| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                Ok(Some(Object {
                    size: header("content-length").parse().unwrap_or(u64::MAX),
                    content_type: header("content-type"),
                }))
            }
            code => Err(StorageError::Status(code)),
        }
    }

    /// Deletes the object; deleting one that does not exist succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let url = actions::DeleteObject::new(&self.bucket, Some(&self.credentials), key)
            .sign(OWN_REQUEST_TTL);
        let resp = self.http.delete(url).send().await?;
        match resp.status().as_u16() {
            200 | 202 | 204 | 404 => Ok(()),
            code => Err(StorageError::Status(code)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(path_style: bool) -> Storage {
        Storage::new(&StorageConfig {
            endpoint: "http://minio:9000".into(),
            client_endpoint: "https://s3.example.com".into(),
            region: "eu-west-1".into(),
            bucket: "files".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI".to_owned().into(),
            path_style,
            key_prefix: "p/".into(),
            timeout_ms: 1000,
        })
        .unwrap()
    }

    fn query(url: &str) -> std::collections::HashMap<String, String> {
        url::Url::parse(url)
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn presigned_put_signs_length_and_type() {
        let s = storage(true);
        let ch = Uuid::nil();
        let id = Uuid::max();
        let key = s.key(ch, id);
        assert_eq!(key, format!("p/{ch}/{id}"));
        let up = s.presign_put(&key, "image/png", 1234, Duration::from_secs(900));
        assert!(
            up.url
                .starts_with(&format!("https://s3.example.com/files/{key}?")),
            "{}",
            up.url
        );
        let q = query(&up.url);
        assert_eq!(q["X-Amz-SignedHeaders"], "content-length;content-type;host");
        assert_eq!(q["X-Amz-Expires"], "900");
        assert!(q["X-Amz-Credential"].starts_with("AKIDEXAMPLE/"));
        assert!(q["X-Amz-Credential"].ends_with("/eu-west-1/s3/aws4_request"));
        assert_eq!(q["X-Amz-Signature"].len(), 64);
        assert_eq!(
            up.headers,
            vec![
                ("content-type".to_owned(), "image/png".to_owned()),
                ("content-length".to_owned(), "1234".to_owned())
            ]
        );
        // Another size or type gives another signature: storage refuses the mismatch.
        let other = s.presign_put(&key, "image/png", 1235, Duration::from_secs(900));
        assert_ne!(query(&other.url)["X-Amz-Signature"], q["X-Amz-Signature"]);
    }

    #[test]
    fn presigned_get_and_virtual_host_style() {
        let s = storage(false);
        let url = s.presign_get("p/a/b", Duration::from_secs(300));
        assert!(
            url.starts_with("https://files.s3.example.com/p/a/b?"),
            "{url}"
        );
        let q = query(&url);
        assert_eq!(q["X-Amz-Expires"], "300");
        assert_eq!(q["X-Amz-SignedHeaders"], "host");
        assert_eq!(
            Storage::public_url("https://cdn.example.com/", "p/a/b"),
            "https://cdn.example.com/p/a/b"
        );
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let s = storage(true);
        assert!(!format!("{s:?}").contains("wJalrXUtnFEMI"));
        let cfg = StorageConfig {
            endpoint: "https://s3.example.com".into(),
            client_endpoint: String::new(),
            region: "r".into(),
            bucket: "b".into(),
            access_key_id: "k".into(),
            secret_access_key: "topsecret".to_owned().into(),
            path_style: true,
            key_prefix: String::new(),
            timeout_ms: 1,
        };
        assert!(!format!("{cfg:?}").contains("topsecret"));
    }
}
