//! Parallel, deterministic gzip (the pigz layout without dictionary sharing).
//!
//! The input is cut into fixed 1 MiB blocks; each is deflated on its own and ended with a sync
//! flush (an empty stored block, so the next block starts on a byte boundary); an empty final
//! block and the gzip trailer close the stream. The output is one ordinary gzip member that any
//! decoder reads, and it depends only on the input, the level and the block size — not on the
//! number of threads — so layers stay reproducible on any machine.

use std::io::{self, Write};

use flate2::{Compress, Compression, FlushCompress};

/// Bytes of input per independently compressed block.
pub const BLOCK: usize = 1 << 20;

/// gzip header: no name, no mtime, no extra flags, OS "unknown".
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// An empty final stored block.
const LAST_BLOCK: [u8; 2] = [0x03, 0x00];

/// A gzip writer that compresses blocks on several threads while the caller keeps writing.
pub struct ParallelGzEncoder<W: Write> {
    inner: Option<W>,
    level: u32,
    threads: usize,
    current: Vec<u8>,
    /// Blocks being compressed, oldest first (written out in this order).
    in_flight: std::collections::VecDeque<std::sync::mpsc::Receiver<io::Result<Vec<u8>>>>,
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    crc: crc32fast::Hasher,
    size: u64,
    started: bool,
}

type Job = (
    Vec<u8>,
    u32,
    std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>,
);

impl<W: Write> std::fmt::Debug for ParallelGzEncoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelGzEncoder")
            .field("level", &self.level)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl<W: Write> ParallelGzEncoder<W> {
    pub fn new(inner: W, level: u32) -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8);
        ParallelGzEncoder {
            inner: Some(inner),
            level,
            threads,
            current: Vec::with_capacity(BLOCK),
            in_flight: Default::default(),
            jobs: None,
            workers: Vec::new(),
            crc: crc32fast::Hasher::new(),
            size: 0,
            started: false,
        }
    }

    fn out(&mut self) -> io::Result<&mut W> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::other("gzip stream already finished"))
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.started {
            self.started = true;
            self.out()?.write_all(&HEADER)?;
        }
        Ok(())
    }

    /// Hand a full block to the workers (started on first use).
    fn submit(&mut self, block: Vec<u8>) -> io::Result<()> {
        self.header()?;
        if self.jobs.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
            for _ in 0..self.threads {
                let rx = rx.clone();
                self.workers.push(std::thread::spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        let Ok((data, level, reply)) = job else {
                            return;
                        };
                        let _ = reply.send(deflate_block(&data, level));
                    }
                }));
            }
            self.jobs = Some(tx);
        }
        let (reply, result) = std::sync::mpsc::sync_channel(1);
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("no compression workers"))?
            .send((block, self.level, reply))
            .map_err(|_| io::Error::other("compression workers stopped"))?;
        self.in_flight.push_back(result);
        // Bounded memory: at most two blocks per worker wait to be written.
        while self.in_flight.len() > 2 * self.threads {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(rx) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let block = rx
            .recv()
            .map_err(|_| io::Error::other("a compression worker died"))??;
        self.out()?.write_all(&block)
    }

    /// Finish the stream and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header()?;
        if !self.current.is_empty() {
            let last = std::mem::take(&mut self.current);
            if self.in_flight.is_empty() {
                // Small layers: no threads at all.
                let c = deflate_block(&last, self.level)?;
                self.out()?.write_all(&c)?;
            } else {
                self.submit(last)?;
            }
        }
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        let crc = self.crc.clone().finalize();
        let size = self.size as u32;
        let mut out = self
            .inner
            .take()
            .ok_or_else(|| io::Error::other("gzip stream already finished"))?;
        out.write_all(&LAST_BLOCK)?;
        out.write_all(&crc.to_le_bytes())?;
        out.write_all(&size.to_le_bytes())?;
        Ok(out)
    }
}

impl<W: Write> Drop for ParallelGzEncoder<W> {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl<W: Write> Write for ParallelGzEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(BLOCK - self.current.len());
        self.current.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        self.size += n as u64;
        if self.current.len() == BLOCK {
            let block = std::mem::replace(&mut self.current, Vec::with_capacity(BLOCK));
            self.submit(block)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Blocks are fixed-size for determinism; only `finish` ends the stream.
        Ok(())
    }
}

/// Input of the probe that decides whether a block is worth compressing.
const PROBE: usize = 64 * 1024;

/// Raw deflate of one block, ended with a sync flush (not final). A block whose first 64 KiB
/// do not shrink by 2% at level 1 (already-compressed files: archives, images, binaries of
/// compressed data) is stored instead: same format, a fraction of the time, barely larger.
/// The choice depends only on the content, so the output stays deterministic.
fn deflate_block(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let probe = &data[..data.len().min(PROBE)];
    let level = if level > 0
        && probe.len() >= 4096
        && raw_deflate(probe, 1)?.len() * 100 > probe.len() * 98
    {
        0
    } else {
        level
    };
    raw_deflate(data, level)
}

fn raw_deflate(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    loop {
        let consumed = c.total_in() as usize;
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        c.compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        // The flush is complete when all input is in and the compressor left room unused.
        if c.total_in() as usize == data.len() && out.len() < out.capacity() {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn gz(data: &[u8], threads: usize) -> Vec<u8> {
        let mut e = ParallelGzEncoder::new(Vec::new(), 6);
        e.threads = threads;
        // Odd write sizes cross block boundaries.
        for chunk in data.chunks(77_777) {
            e.write_all(chunk).unwrap();
        }
        e.finish().unwrap()
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn round_trips_and_ignores_thread_count() {
        let mut seed = 7u64;
        let mut data: Vec<u8> = (0..(3 * BLOCK + 12345))
            .map(|i| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if i % 3 == 0 {
                    (seed >> 33) as u8
                } else {
                    b'a' + (i % 7) as u8
                }
            })
            .collect();
        let one = gz(&data, 1);
        assert_eq!(one, gz(&data, 4));
        assert_eq!(gunzip(&one), data);
        assert!(one.len() < data.len());
        // The system's gzip reads it too (and checks the trailer's crc and size).
        if let Ok(mut child) = std::process::Command::new("gzip")
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        {
            let mut stdin = child.stdin.take().unwrap();
            let input = one.clone();
            let writer = std::thread::spawn(move || stdin.write_all(&input));
            let out = child.wait_with_output().unwrap();
            writer.join().unwrap().unwrap();
            assert!(out.status.success());
            assert_eq!(out.stdout, data);
        }
        data.clear();
        assert_eq!(gunzip(&gz(&data, 2)), data);
        assert_eq!(gunzip(&gz(b"x", 2)), b"x");
    }

    #[test]
    fn incompressible_blocks_are_stored() {
        let mut seed = 1u64;
        let random: Vec<u8> = (0..BLOCK)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let mut data = random.clone();
        data.extend(std::iter::repeat_n(b'z', BLOCK));
        let out = gz(&data, 2);
        assert_eq!(gunzip(&out), data);
        // The random block costs only its stored-block headers; the text block shrinks.
        assert!(out.len() < BLOCK + BLOCK / 100, "{}", out.len());
        assert!(out.len() > BLOCK);
    }

    #[test]
    fn exact_block_multiple() {
        let data = vec![42u8; 2 * BLOCK];
        assert_eq!(gunzip(&gz(&data, 2)), data);
    }
}
