//! The runner's local control socket (`runner.sock` beside its configuration): `archway
//! runner drain` connects, asks for a drain with a deadline, and reads progress lines until
//! the runner has stopped (the socket closes when the process exits).
//!
//! The socket is a Unix socket with mode 0600: only the runner's own user can drain it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::agent::DrainHandle;

/// Where the control socket of the runner configured at `config` lives.
pub fn socket_path(config: &Path) -> PathBuf {
    config.with_extension("sock")
}

/// Accepts drain requests until the process ends.
pub async fn serve(path: PathBuf, drain: DrainHandle) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let drain = drain.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            // One request per connection, read with a limit and a timeout.
            let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await;
            let reply = match line {
                Ok(Ok(Some(l))) if l.len() < 100 => match l.split_once(' ') {
                    Some(("drain", secs)) => match secs.trim().parse::<u64>() {
                        Ok(s) => {
                            drain.drain(Duration::from_secs(s));
                            format!("draining: running jobs have {s}s to finish\n")
                        }
                        Err(_) => "error: expected `drain SECONDS`\n".to_owned(),
                    },
                    _ => "error: expected `drain SECONDS`\n".to_owned(),
                },
                _ => "error: expected `drain SECONDS`\n".to_owned(),
            };
            let _ = w.write_all(reply.as_bytes()).await;
            // Keep the connection until the runner exits (the client waits for EOF).
            std::future::pending::<()>().await;
        });
    }
}

/// Asks the runner behind `path` to drain; returns its answer, then waits until it stops
/// (or `wait` passes).
pub async fn request_drain(
    path: &Path,
    deadline: Duration,
    wait: Duration,
) -> std::io::Result<(String, bool)> {
    let stream = UnixStream::connect(path).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "no runner is listening on {} ({e}); is `archway runner run` running with this configuration?",
                path.display()
            ),
        )
    })?;
    let (r, mut w) = stream.into_split();
    w.write_all(format!("drain {}\n", deadline.as_secs()).as_bytes())
        .await?;
    let mut lines = BufReader::new(r).lines();
    let answer = lines.next_line().await?.unwrap_or_default();
    let stopped = tokio::time::timeout(wait, async {
        while let Ok(Some(_)) = lines.next_line().await {}
    })
    .await
    .is_ok();
    Ok((answer, stopped))
}
