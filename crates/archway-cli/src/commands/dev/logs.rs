//! `archway dev logs`: what the containers printed (their stdout and stderr, and the
//! supervisor's messages about starts and exits), from each container's `log` file.

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use super::state::ContainerDir;
use super::{LogsArgs, select};

/// How often `--follow` looks for new output.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

pub fn logs(a: LogsArgs) -> anyhow::Result<ExitCode> {
    let (_, envdir, record) = select(&a.select)?;
    let names: Vec<String> = record
        .environment
        .containers
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let chosen: Vec<String> = match &a.container {
        Some(c) if names.contains(c) => vec![c.clone()],
        Some(c) => bail!(
            "no container `{c}` in the environment `{}` (there is {})",
            record.name,
            names.join(", ")
        ),
        None => names,
    };
    // One container: its lines as they are; several: each line prefixed by its name.
    let width = chosen.iter().map(String::len).max().unwrap_or(0);
    let prefix = |name: &str| {
        if chosen.len() > 1 {
            format!("{name:<width$} | ")
        } else {
            String::new()
        }
    };
    let mut tails: Vec<(ContainerDir, String, u64, Vec<u8>)> = Vec::new();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for name in &chosen {
        let dir = envdir.container(name);
        let (text, end) = read_from(&dir, 0)?;
        let lines: Vec<&str> = text.lines().collect();
        let from = a.tail.map_or(0, |n| lines.len().saturating_sub(n));
        for l in &lines[from..] {
            writeln!(out, "{}{l}", prefix(name))?;
        }
        // A last line without its newline yet: kept for --follow to finish.
        let partial = if text.ends_with('\n') || text.is_empty() {
            Vec::new()
        } else {
            text.rsplit('\n')
                .next()
                .unwrap_or_default()
                .as_bytes()
                .to_vec()
        };
        tails.push((dir, prefix(name), end - partial.len() as u64, Vec::new()));
    }
    out.flush()?;
    if !a.follow {
        return Ok(ExitCode::SUCCESS);
    }
    // Follow until every chosen container has stopped running (or Ctrl-C).
    loop {
        let mut any_running = false;
        for (dir, prefix, offset, pending) in &mut tails {
            let running = dir.state().is_running();
            any_running |= running;
            let (text, end) = read_from(dir, *offset)?;
            *offset = end;
            pending.extend_from_slice(text.as_bytes());
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                write!(out, "{prefix}{}", String::from_utf8_lossy(&line))?;
            }
            if !running && !pending.is_empty() {
                writeln!(out, "{prefix}{}", String::from_utf8_lossy(pending))?;
                pending.clear();
            }
        }
        out.flush()?;
        if !any_running {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// The log from `offset` to its end (lossy UTF-8), and the end's offset. A log that is not
/// there yet reads as empty.
fn read_from(dir: &ContainerDir, offset: u64) -> anyhow::Result<(String, u64)> {
    let path = dir.log_path();
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((String::new(), offset)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let len = f.metadata()?.len();
    // Truncated (the environment was recreated): start again.
    let offset = if len < offset { 0 } else { offset };
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok((
        String::from_utf8_lossy(&buf).into_owned(),
        offset + buf.len() as u64,
    ))
}
