//! Best-effort delivery of events to an HTTP endpoint: one task posts them
//! in order, each with a 5 s timeout; a slow or dead endpoint loses events
//! (counted in `stockade_webhook_dropped_total`) but never slows the API.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::error::ServeError;
use crate::events::EventRecord;
use crate::metrics::Metrics;

/// Events queued for the webhook before new ones are dropped.
pub const WEBHOOK_QUEUE: usize = 1024;
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed `http://host:port/path` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// `host:port`, as connected to and sent in `Host`.
    pub authority: String,
    pub path: String,
}

impl WebhookUrl {
    pub fn parse(url: &str) -> Result<WebhookUrl, ServeError> {
        let bad = |why: &str| {
            ServeError::Config(format!(
                "webhook URL {url:?} {why}; give one like http://127.0.0.1:9000/events"
            ))
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("must start with http:// (https is not supported)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("has no host (or has credentials)"));
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("has spaces or control characters in its path"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(WebhookUrl {
            authority,
            path: path.to_string(),
        })
    }
}

/// Starts the delivery task; returns the queue to publish into.
pub fn start(
    url: WebhookUrl,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> mpsc::Sender<Arc<EventRecord>> {
    let (tx, mut rx) = mpsc::channel::<Arc<EventRecord>>(WEBHOOK_QUEUE);
    tokio::spawn(async move {
        loop {
            let rec = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => return },
                _ = shutdown.wait_for(|v| *v) => return,
            };
            let body = rec.json.to_string();
            let ok = tokio::time::timeout(DELIVERY_TIMEOUT, post(&url, &body))
                .await
                .is_ok_and(|r| r.is_ok());
            if !ok {
                metrics.webhook_dropped();
            }
        }
    });
    tx
}

/// One `POST` with `Connection: close`; succeeds on any 2xx status.
async fn post(url: &WebhookUrl, body: &str) -> std::io::Result<()> {
    let mut s = TcpStream::connect(&url.authority).await?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nUser-Agent: stockade\r\nConnection: close\r\n\r\n",
        url.path,
        url.authority,
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = s.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    match line.split(' ').nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        _ => Err(std::io::Error::other(format!(
            "webhook answered {:?}",
            line.lines().next().unwrap_or("")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_urls_and_rejects_others() {
        let u = WebhookUrl::parse("http://127.0.0.1:9000/hook").unwrap();
        assert_eq!(u.authority, "127.0.0.1:9000");
        assert_eq!(u.path, "/hook");
        let u = WebhookUrl::parse("http://localhost").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("localhost:80", "/")
        );
        for bad in ["https://x/", "ftp://x", "http:///p", "http://u:p@h/"] {
            let e = WebhookUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains("http://127.0.0.1:9000/events"), "{e}");
        }
    }
}
