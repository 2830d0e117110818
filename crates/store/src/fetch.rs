//! HTTP: small JSON documents, and verified, resumable downloads into `.partial` files.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::error::io_err;
use crate::files::hex;
use crate::name::Digest;
use crate::StoreError;

/// Tries of one download before giving up (each resumes where the last one stopped).
pub(crate) const MAX_ATTEMPTS: usize = 3;
/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to start answering.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for any bytes of a body being read: a download that stalls this long fails
/// its try (its `.partial` file is kept, and the next try resumes it).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes read from the network per write to disk.
const COPY_BUF_BYTES: usize = 1 << 20;

/// What a download must turn out to be.
#[derive(Clone, Debug)]
pub(crate) struct Want {
    /// Its exact size.
    pub size_bytes: u64,
    /// Its sha256, when the manifest or listing gives one.
    pub sha256: Option<Digest>,
}

/// A blocking HTTP client (no async runtime) with the hub's token, if any.
pub(crate) struct Client {
    agent: ureq::Agent,
    bearer: Option<String>,
}

/// How one try of a download ended badly.
enum Failed {
    /// The connection broke: the `.partial` file is kept, and the next try resumes it.
    Retry(StoreError),
    /// Nothing a retry would fix.
    Fatal(StoreError),
}

fn http_err(url: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Http {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

fn header<'a>(resp: &'a ureq::http::Response<ureq::Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

impl Client {
    /// A client sending `Authorization: Bearer TOKEN` when a token is given.
    pub fn new(token: Option<&str>) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .timeout_per_read(Some(STALL_TIMEOUT))
            .user_agent(concat!("hoist/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            agent,
            bearer: token.map(|t| format!("Bearer {t}")),
        }
    }

    fn get(&self, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let req = self.agent.get(url);
        match &self.bearer {
            Some(b) => req.header("Authorization", b),
            None => req,
        }
    }

    /// GETs a small document (at most `max_bytes`), which must come with status 200.
    pub fn get_small(
        &self,
        url: &str,
        accept: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let mut resp = self
            .get(url)
            .header("Accept", accept)
            .call()
            .map_err(|e| http_err(url, e))?;
        match resp.status().as_u16() {
            200 => {}
            401 | 403 => {
                return Err(http_err(
                    url,
                    format!(
                        "{} (set HF_TOKEN for a gated or private repository)",
                        resp.status()
                    ),
                ))
            }
            404 => {
                return Err(http_err(
                    url,
                    "404 Not Found (check the name and tag or revision)",
                ))
            }
            _ => return Err(http_err(url, resp.status())),
        }
        resp.body_mut()
            .with_config()
            .limit(max_bytes)
            .read_to_vec()
            .map_err(|e| http_err(url, e))
    }

    /// Downloads `url` into `dest`: into `DEST.partial` first (resumed with a `Range` request
    /// when one is there), renamed to `dest` only once its size and sha256 are right. A wrong
    /// size or hash deletes the partial file. `progress` sees the bytes on disk so far.
    pub fn download(
        &self,
        url: &str,
        dest: &Path,
        want: &Want,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), StoreError> {
        let partial = partial_path(dest);
        let mut attempt = 0;
        let hash = loop {
            attempt += 1;
            match self.try_download(url, &partial, want, progress) {
                Ok(hash) => break hash,
                Err(Failed::Retry(e)) if attempt < MAX_ATTEMPTS => {
                    tracing::warn!("{e}; resuming (try {} of {MAX_ATTEMPTS})", attempt + 1);
                    continue;
                }
                Err(Failed::Retry(e)) | Err(Failed::Fatal(e)) => return Err(e),
            }
        };
        if let Some(expected) = &want.sha256 {
            if hash != expected.hex() {
                let _ = std::fs::remove_file(&partial);
                return Err(StoreError::Verify {
                    url: url.to_string(),
                    reason: format!("sha256 is {hash}, the manifest says {}", expected.hex()),
                });
            }
        }
        std::fs::rename(&partial, dest).map_err(io_err(dest))
    }

    /// One try: resumes or restarts the partial file, returns the hex sha256 of all of it.
    fn try_download(
        &self,
        url: &str,
        partial: &Path,
        want: &Want,
        progress: &mut dyn FnMut(u64),
    ) -> Result<String, Failed> {
        let fatal = |e| Failed::Fatal(e);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(partial)
            .map_err(io_err(partial))
            .map_err(fatal)?;
        let mut have = file
            .metadata()
            .map_err(io_err(partial))
            .map_err(fatal)?
            .len();
        if have > want.size_bytes {
            file.set_len(0).map_err(io_err(partial)).map_err(fatal)?;
            have = 0;
        }
        let mut hasher = Sha256::new();
        if have > 0 {
            hash_prefix(&mut file, have, &mut hasher)
                .map_err(io_err(partial))
                .map_err(fatal)?;
        }
        if have == want.size_bytes && have > 0 {
            return Ok(hex(&hasher.finalize()));
        }
        let mut req = self.get(url);
        if have > 0 {
            req = req.header("Range", &format!("bytes={have}-"));
        }
        let mut resp = req.call().map_err(|e| Failed::Retry(http_err(url, e)))?;
        match resp.status().as_u16() {
            206 if have > 0 => {}
            200 => {
                // The server sends the whole file: start over.
                file.set_len(0).map_err(io_err(partial)).map_err(fatal)?;
                hasher = Sha256::new();
                have = 0;
            }
            code @ (500..=599) => return Err(Failed::Retry(http_err(url, code))),
            _ => return Err(fatal(http_err(url, resp.status()))),
        }
        let lying = |reason: String| {
            let _ = std::fs::remove_file(partial);
            Failed::Fatal(StoreError::Verify {
                url: url.to_string(),
                reason,
            })
        };
        if let Some(len) = header(&resp, "content-length").and_then(|v| v.parse::<u64>().ok()) {
            if have.checked_add(len) != Some(want.size_bytes) {
                return Err(lying(format!(
                    "the server sends {len} bytes from byte {have}, but the file is {} bytes",
                    want.size_bytes
                )));
            }
        }
        file.seek(SeekFrom::Start(have))
            .map_err(io_err(partial))
            .map_err(fatal)?;
        let mut body = resp.body_mut().as_reader();
        let mut buf = vec![0u8; COPY_BUF_BYTES];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // What arrived is kept (flushed) for the next try to resume.
                    let _ = file.sync_data();
                    return Err(Failed::Retry(http_err(
                        url,
                        format!("connection lost at byte {have}: {e}"),
                    )));
                }
            };
            if have + n as u64 > want.size_bytes {
                return Err(lying(format!(
                    "the server sends more than the {} bytes promised",
                    want.size_bytes
                )));
            }
            file.write_all(&buf[..n])
                .map_err(io_err(partial))
                .map_err(fatal)?;
            hasher.update(&buf[..n]);
            have += n as u64;
            progress(have);
        }
        file.sync_all().map_err(io_err(partial)).map_err(fatal)?;
        if have < want.size_bytes {
            return Err(Failed::Retry(http_err(
                url,
                format!(
                    "the connection closed at byte {have} of {}",
                    want.size_bytes
                ),
            )));
        }
        Ok(hex(&hasher.finalize()))
    }
}

/// Where a download to `dest` lands until verified.
pub(crate) fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

/// Feeds the first `len` bytes of `file` to `hasher`.
fn hash_prefix(file: &mut File, len: u64, hasher: &mut Sha256) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; COPY_BUF_BYTES];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        file.read_exact(&mut buf[..want])?;
        hasher.update(&buf[..want]);
        left -= want as u64;
    }
    Ok(())
}
